#!/usr/bin/env bash
# Build the sdist and wheel, check their metadata and contents, install the wheel into a fresh venv outside
# the repository and run the quickstart and `layerzero doctor` from it: what a user gets from
# `pip install layerzero-dispatch`, not what the editable checkout happens to provide.
#
# Usage: scripts/check_wheel.sh [PYTHON]   (PYTHON: an interpreter with build and twine, default .venv/bin/python)
# Env:   CHECK_WHEEL_DIR   work folder (default: a fresh temporary folder, removed afterwards)
#        TORCH_SPEC        torch requirement for the fresh venv (default torch==2.13.0: on a CPU machine pip takes
#                          the CPU build from the local wheel cache; a plain `torch` would pull a multi-GB CUDA build)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="${CHECK_WHEEL_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/layerzero-wheel.XXXXXX")}"
[ -n "${CHECK_WHEEL_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
case "$WORK" in "$ROOT"|"$ROOT"/*) echo "error: CHECK_WHEEL_DIR must be outside the repository" >&2; exit 2;; esac
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "build sdist and wheel"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"
WHEEL="$(ls "$WORK"/dist/*.whl)"
SDIST="$(ls "$WORK"/dist/*.tar.gz)"

step "metadata (twine check) and contents"
"$PY" -m twine check --strict "$WORK"/dist/*
"$PY" - "$WHEEL" "$SDIST" <<'PY'
import sys, tarfile, zipfile
from email.parser import Parser
wheel, sdist = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)
need(meta["Name"] == "layerzero-dispatch", f"Name is {meta['Name']!r}")
need(meta["License-Expression"] == "Apache-2.0", f"License-Expression is {meta['License-Expression']!r}")
need(any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE not in the wheel's dist-info")
extras = set(meta.get_all("Provides-Extra") or [])
need({"hf", "cli", "notebook", "vllm", "all"} <= extras, f"extras: {sorted(extras)}")
need(len(meta.get_all("Project-URL") or []) >= 3, "Project-URL entries missing")
need(len(meta.get_all("Classifier") or []) >= 5, "classifiers missing")
for pkg in ("layerzero/__init__.py", "layerzero/__main__.py", "layerzero_hf/__init__.py", "layerzero_vllm/__init__.py",
            "layerzero/py.typed", "layerzero/data/patches/llama.yaml", "layerzero/data/configs/default_policy.yaml",
            "layerzero/data/configs/models.yaml"):
    need(pkg in names, f"wheel lacks {pkg}")
need(not any(n.startswith("tests/") for n in names), "tests/ leaked into the wheel")
with tarfile.open(sdist) as t:
    members = [m.split("/", 1)[1] for m in t.getnames() if "/" in m]
for path in ("LICENSE", "README.md", "pyproject.toml", "MANIFEST.in", "docs/getting-started.md",
             "docs/troubleshooting.md", "examples/quickstart.py", "examples/compare_kernels.ipynb",
             "configs/default_policy.yaml", "configs/models.yaml", "patches/llama.yaml", "tests/conftest.py",
             "scripts/check_wheel.sh"):
    need(path in members, f"sdist lacks {path}")
if problems:
    sys.exit("error: " + "; ".join(problems))
print(f"ok: {meta['Name']} {meta['Version']}, {len(names)} wheel files, {len(members)} sdist files, extras "
      f"{', '.join(sorted(extras))}")
PY

step "fresh venv outside the repository"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# --no-compile: byte-compiling torch's thousands of modules is most of an install's time, and the checks
# below import only a few of them.
pip_install() {
  "$VPY" -m pip install -q --no-compile --disable-pip-version-check "$@" >>"$WORK/pip.log" 2>&1 \
    || { grep -v "is ignored: it is neither a file nor a directory" "$WORK/pip.log" | tail -30; exit 1; }
}
pip_install "$TORCH_SPEC"
pip_install -c "$ROOT/requirements-dev.lock" "$WHEEL[hf,cli]"
"$VPY" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(torch|transformers|layerzero-dispatch) "

step "run from the installed wheel"
cd "$WORK"
"$VPY" - "$ROOT" <<'PY'
import sys
from pathlib import Path
import layerzero, layerzero_hf
root = Path(sys.argv[1]).resolve()
for mod in (layerzero, layerzero_hf):
    where = Path(mod.__file__).resolve()
    if root in where.parents:
        sys.exit(f"error: {mod.__name__} imported from the repository ({where}), not the installed wheel")
print("imported from", Path(layerzero.__file__).parent)
PY
"$WORK/venv/bin/layerzero" --version
env -u LAYERZERO_POLICY -u LAYERZERO_HF_RULES OMP_NUM_THREADS=1 "$VPY" "$ROOT/examples/quickstart.py" >"$WORK/quickstart.log" 2>&1 \
  || { cat "$WORK/quickstart.log"; exit 1; }
tail -3 "$WORK/quickstart.log"
env -u LAYERZERO_POLICY -u LAYERZERO_HF_RULES "$WORK/venv/bin/layerzero" doctor >"$WORK/doctor.log" 2>&1 \
  || { cat "$WORK/doctor.log"; exit 1; }
grep -q "configuration OK" "$WORK/doctor.log" || { cat "$WORK/doctor.log"; echo "error: doctor found a problem" >&2; exit 1; }
echo "layerzero doctor: configuration OK"
echo
echo "check-wheel: OK in ${SECONDS}s"
