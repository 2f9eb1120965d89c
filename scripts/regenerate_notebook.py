"""Re-execute examples/compare_kernels.ipynb and write it back with its outputs (tables, plot, A/B result).

The notebook is committed with outputs so that it reads as a worked example on the repository page; run
this after editing a cell (``make notebook``). It executes on CPU with the tiny random model, one thread
(timings of tiny kernels are pure noise otherwise), and drops progress-bar streams, which are transient.
Needs the dev extra (nbclient, nbformat, ipykernel) and the notebook extra (pandas, matplotlib).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "compare_kernels.ipynb"


def execute(path: Path = NOTEBOOK, timeout: int = 600) -> object:
    """The notebook at ``path`` executed in a fresh kernel (outputs in memory, nothing written)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    env_backup = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)})
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend renders figures as PNG
    os.environ.pop("LAYERZERO_POLICY", None)
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return nb


def strip_progress(nb: object) -> None:
    """Remove stderr streams that are only progress bars (carriage-return redraws)."""
    for cell in nb.cells:  # type: ignore[attr-defined]
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr" and "\r" in o["text"])]


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="execute only; exit 1 if a cell fails")
    args = parser.parse_args(argv)
    nb = execute()
    strip_progress(nb)
    if not args.check:
        nbformat.write(nb, NOTEBOOK)
        print(f"wrote {NOTEBOOK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
