"""Build the API reference from the docstrings with pdoc (``make docs``); fail on any pdoc warning.

Every module of ``layerzero`` and ``layerzero_hf`` is documented (``layerzero_vllm`` needs vLLM installed
and is documented in docs/vllm.md instead). A warning from pdoc (a module that fails to import, a
docstring it cannot render) makes the build fail, so a broken reference is caught in CI, not by a reader.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("layerzero", "layerzero_hf")
# pdoc walks some packages itself; naming one of their submodules again only repeats it.
_DUPLICATE = "has already been added"


def modules() -> list[str]:
    """Every importable module name of :data:`PACKAGES`, packages first."""
    import importlib

    names: list[str] = []
    for top in PACKAGES:
        pkg = importlib.import_module(top)
        names.append(top)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, top + ".")]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "build" / "docs"), help="output folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", footer_text="LayerZero API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules(), output_directory=Path(args.output))
    problems = [w for w in caught if _DUPLICATE not in str(w.message)]
    for w in problems:
        print(f"docs warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})", file=sys.stderr)
    if problems:
        print(f"error: the API reference has {len(problems)} warning(s); fix the docstrings or imports above",
              file=sys.stderr)
        return 1
    print(f"API reference: {Path(args.output) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
