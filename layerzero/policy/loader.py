"""Load and validate a policy: YAML text, a file, or a mapping -> :class:`Policy`, or one
:class:`~layerzero.errors.ConfigValidationError` listing every problem.

Nothing else escapes: YAML syntax errors, binary files, alias bombs, self-referencing anchors, absurd
numbers and plain type mistakes all become :class:`~layerzero.errors.ValidationProblem` s naming the file,
the field path (``dispatch_rules[2].conditions.batch_size_gte``), the offending value and the fix. That is
what lets a hot-reloading dispatcher keep serving the previous policy on any bad edit.

The steps live in their own modules: :mod:`~layerzero.policy.parsing` (text to data),
:mod:`~layerzero.policy.validator` (data to :class:`Policy`) and :mod:`~layerzero.policy.paths` (where the
shipped default is); this module is the entry points and the guard that keeps the promise above.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from layerzero.config_files import DOCUMENT, read_config_text
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.policy.model import Policy
from layerzero.policy.parsing import mapping_hash, parse_yaml, text_hash
from layerzero.policy.paths import default_policy_path
from layerzero.policy.schema import MAX_SOURCE_BYTES, MISSING, Problems, clip, type_name
from layerzero.policy.validator import PolicyValidator
from layerzero.registry import get_global_kernel_registry
from layerzero.registry.kernel_registry import KernelRegistry

__all__ = [
    "INTERNAL_ERROR_MARK",
    "default_policy_path",
    "load_default_policy",
    "load_policy",
    "parse_policy_text",
    "validate_policy",
]

INTERNAL_ERROR_MARK = "internal error while validating"


# ============================================================================================== public API
def load_policy(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    registry: KernelRegistry | None = None,
) -> Policy:
    """A validated policy from a YAML file path or an already-parsed mapping.

    ``None`` loads the shipped default policy (``configs/default_policy.yaml``). Kernel ids and aliases
    resolve through ``registry`` (default: the global kernel registry). Raises only
    :class:`ConfigValidationError`."""
    if source is None:
        path = default_policy_path()
        if path is None:
            raise ConfigValidationError(
                [ValidationProblem(DOCUMENT, None, "the default policy file is not installed; fix: reinstall "
                                   "layerzero or pass a policy path")]
            )
        source = path
    if isinstance(source, Mapping):
        return _guarded(lambda: _from_mapping(source, None, registry, mapping_hash(source)), None)
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fsdecode(source)
        label = path if "\n" not in path and len(path) <= 1024 else "<not a path>"
        return _guarded(lambda: _from_file(path, registry, label), label)
    raise ConfigValidationError(
        [ValidationProblem(DOCUMENT, clip(source), f"a policy source is a file path or a mapping, got "
                           f"{type_name(source)}; fix: pass a path or a dict")]
    )


def parse_policy_text(text: str, source: str | None = None, registry: KernelRegistry | None = None) -> Policy:
    """A validated policy from YAML text; ``source`` names it in problems (a path, or "<inline>")."""
    return _guarded(lambda: _from_text(text, source, registry), source)


def validate_policy(
    source: str | os.PathLike[str] | Mapping[str, Any], registry: KernelRegistry | None = None
) -> list[ValidationProblem]:
    """Every problem of a policy source (empty when it is valid); for CLIs and editors."""
    try:
        load_policy(source, registry)
    except ConfigValidationError as e:
        return list(e.problems)
    return []


def load_default_policy(registry: KernelRegistry | None = None) -> Policy:
    """The shipped default policy, validated against ``registry``."""
    return load_policy(None, registry)


# ============================================================================================== plumbing
def _guarded(build: Callable[[], Policy], source: str | None) -> Policy:
    """Run a build step; turn any escape other than ConfigValidationError into one (the loader's promise),
    marked as an internal error so tests and users can tell it from a config mistake."""
    try:
        return build()
    except ConfigValidationError:
        raise
    except RecursionError:
        raise ConfigValidationError(
            [ValidationProblem(DOCUMENT, None, "the document is nested too deeply (or refers to itself); fix: "
                               "flatten it", source)], source=source,
        ) from None
    except Exception as e:  # noqa: BLE001 - the loader's contract is "only ConfigValidationError escapes"
        detail = clip(f"{type(e).__name__}: {e}")
        raise ConfigValidationError(
            [ValidationProblem(DOCUMENT, detail, f"{INTERNAL_ERROR_MARK} ({detail!r}); this is a LayerZero bug: "
                               "please report it with the config", source)], source=source,
        ) from e


def _fail(problems: Problems) -> None:
    if problems:
        raise ConfigValidationError(problems.items, source=problems.source)


def _from_file(path: str, registry: KernelRegistry | None, label: str | None = None) -> Policy:
    """Read through the guarded reader: regular files only (a FIFO is rejected, never waited on), size
    limit, UTF-8; any failure is a ConfigValidationError naming the file."""
    label = path if label is None else label
    try:
        text = read_config_text(path, "policy file", MAX_SOURCE_BYTES, text_api="parse_policy_text(text)")
    except ConfigValidationError as e:
        raise ConfigValidationError([replace(p, source=label) for p in e.problems], source=label) from None
    return _from_text(text, label, registry)


def _from_text(text: str, source: str | None, registry: KernelRegistry | None) -> Policy:
    problems = Problems(source)
    if not isinstance(text, str):
        problems.add(DOCUMENT, text, f"policy text must be a str, got {type_name(text)}; fix: decode it first")
        _fail(problems)
    if len(text) > MAX_SOURCE_BYTES:
        problems.add(DOCUMENT, f"{len(text)} characters", "the text is too large for a policy; fix: pass the right text")
        _fail(problems)
    data = parse_yaml(text, problems)
    if data is MISSING:  # unparseable: nothing more to check
        _fail(problems)
    # Duplicate keys are reported together with every other problem of the parsed document.
    return _from_mapping(data, source, registry, text_hash(text), problems)


def _from_mapping(
    data: Any,
    source: str | None,
    registry: KernelRegistry | None,
    config_hash: str,
    problems: Problems | None = None,
) -> Policy:
    if registry is None:
        registry = get_global_kernel_registry()
    problems = problems if problems is not None else Problems(source)
    policy = PolicyValidator(registry, problems).build(data, source, config_hash)
    _fail(problems)
    assert policy is not None
    return policy
