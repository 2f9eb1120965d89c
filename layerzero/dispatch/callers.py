"""Kernel calls for one fixed set of argument names, spelled out instead of unpacked with ``**``.

``impl(**inputs, **kwargs)`` merges the two dicts into a new one and matches it to the kernel's parameters
by name on every call: for a norm's five arguments about 3,500 machine instructions in CPython 3.11, where
the same call with the names written out (``impl(x=i["x"], weight=i["weight"], ...)``) costs about a third
of that. A call site in a decode loop calls one kernel with the same argument names every time, so the
runner's hit path asks here, once, for a caller written for those names and calls it with the dicts as
they come.

A caller checks the names on every call: each dict holds as many names as it was written for and every one
of them is there, so the keyword arguments are exactly those of ``impl(**inputs, **kwargs)``, in whatever
order the dicts list them. A call with any other names never reaches the kernel through it: the caller
returns :data:`OTHER_NAMES` and the runner takes its general path, which checks them.
"""

from __future__ import annotations

import functools
import keyword
from typing import Any, Callable, Mapping

__all__ = ["OTHER_NAMES", "Caller", "keyword_caller", "unwritten"]

#: A caller's answer for a call whose argument names are not the ones it was written for (the kernel did
#: not run).
OTHER_NAMES: Any = object()

#: ``caller(impl, inputs, kwargs) -> impl(**inputs, **kwargs)``, or :data:`OTHER_NAMES`.
Caller = Callable[[Callable[..., Any], Mapping[str, Any], Mapping[str, Any]], Any]


def unwritten(impl: Callable[..., Any], inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Any:
    """The caller before any names were seen: every call is one of other names."""
    return OTHER_NAMES


@functools.lru_cache(maxsize=256)
def keyword_caller(input_names: tuple[str, ...], option_names: tuple[str, ...]) -> Caller | None:
    """A caller for dicts holding exactly ``input_names`` and ``option_names``; None when they cannot be
    spelled as keywords (not identifiers, a Python keyword, or a name in both dicts), where ``**`` stays
    the way. Shared by every kernel called with these names (the kernel is an argument)."""
    names = (*input_names, *option_names)
    if len(set(names)) != len(names) or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        return None
    reads = [f"a{j} = i[{n!r}]" for j, n in enumerate(input_names)]
    reads += [f"a{len(input_names) + j} = k[{n!r}]" for j, n in enumerate(option_names)]
    source = "\n".join([
        "def call(impl, i, k):",
        f"    if len(i) != {len(input_names)} or len(k) != {len(option_names)}:",
        "        return OTHER_NAMES",
        "    try:",
        *(f"        {line}" for line in reads or ["pass"]),
        "    except KeyError:",
        "        return OTHER_NAMES",
        f"    return impl({', '.join(f'{n}=a{j}' for j, n in enumerate(names))})",
    ])
    namespace: dict[str, Any] = {"OTHER_NAMES": OTHER_NAMES}
    exec(compile(source, f"<layerzero caller {', '.join(names)}>", "exec"), namespace)  # noqa: S102 - names checked above
    return namespace["call"]
