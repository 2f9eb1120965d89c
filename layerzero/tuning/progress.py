"""Progress bars for sweeps and comparisons: tqdm's notebook widget when it can render, else the plain bar.

``tqdm.auto`` picks the Jupyter widget whenever it runs under a kernel and, when ``ipywidgets`` is not
installed, warns "IProgress not found" on every bar before falling back. The widget is a nicety, so the
check is made here once: without ipywidgets the plain text bar is used and nothing is printed about it.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def progress_bar(total: int, desc: str, unit: str, **kwargs: Any) -> Any:
    """A tqdm bar, or None when tqdm is not installed (callers then run without one)."""
    try:
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.auto import tqdm
        else:
            from tqdm.std import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, **kwargs)
