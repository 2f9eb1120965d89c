"""``layerzero validate FILE``: lint any LayerZero YAML file, whichever of the three kinds it is.

The repository ships three kinds of YAML, each with its own loader and its own notion of "valid":
dispatch policies (``configs/default_policy.yaml``, ``configs/examples/*``: :func:`layerzero.policy.load_policy`),
per-model rules and experiments (``configs/models.yaml``: :mod:`layerzero_hf.rules`) and architecture
patch specs (``patches/*.yaml``: :mod:`layerzero_hf.specs`). Linting a rules file as a policy would call a
correct shipped file invalid, so the kind is detected from the file's top-level keys (``--kind`` overrides
the guess) and the file goes to the loader that really reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Optional

import typer

from layerzero.cli.common import EXIT_PROBLEM, check_choice, print_json, usage

KINDS: tuple[str, ...] = ("policy", "rules", "spec")
# Keys only one kind has (policy keys are the loader's own; see docs/policy.md).
_RULES_KEYS = frozenset({"rules", "experiments"})
_SPEC_KEYS = frozenset({"model_types", "module", "patches", "attention"})


def detect_kind(data: Any) -> str:
    """``"rules"`` or ``"spec"`` when the top-level keys say so, else ``"policy"`` (whose loader then
    reports unknown keys with a did-you-mean)."""
    if isinstance(data, Mapping):
        keys = {str(k) for k in data}
        if keys & _RULES_KEYS:
            return "rules"
        if keys & _SPEC_KEYS:
            return "spec"
    return "policy"


def _load(kind: str, path: Path) -> tuple[Any, Callable[[Any], dict[str, int]]]:
    """Load ``path`` as ``kind`` with the loader that really reads it; returns the object and a summary."""
    if kind == "policy":
        from layerzero.policy import load_policy

        return load_policy(str(path)), _policy_summary
    try:
        import layerzero_hf  # noqa: F401 - the rules and spec loaders live in the Transformers integration
    except ImportError as e:
        usage(f"{path} is a {'per-model rules' if kind == 'rules' else 'architecture spec'} file; checking it "
              f"needs the Transformers integration: pip install 'layerzero-dispatch[hf]' ({e})")
    if kind == "rules":
        from layerzero_hf.rules import load_rules

        return load_rules(str(path)), lambda r: {"rules": len(r.rules), "experiments": len(r.experiments)}
    from layerzero_hf.specs import load_arch_spec

    return load_arch_spec(path), lambda s: {"model_types": len(s.model_types), "patches": len(s.patches)}


def validate(
    config: Annotated[Path, typer.Argument(help="YAML file: a policy, a per-model rules file or an "
                                                "architecture spec (detected from its keys).")],
    kind: Annotated[Optional[str], typer.Option(help="policy | rules | spec (default: detected).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lint a policy, rules or arch-spec file: exit 0 and "OK" when valid, else exit 1 listing every
    problem (field, value, fix); exit 2 when the file cannot be read."""
    from layerzero.config_files import load_yaml_file
    from layerzero.errors import ConfigValidationError

    check_choice("--kind", kind, KINDS)
    if not config.exists():
        usage(f"{config}: file not found; check the path")
    if not config.is_file():
        usage(f"{config}: not a regular file")
    detected = kind
    if detected is None:
        try:
            detected = detect_kind(load_yaml_file(config, "file to validate"))
        except ConfigValidationError:
            detected = "policy"  # unparsable: the policy loader reports the YAML error with line and column
    try:
        obj, summarize = _load(detected, config)
    except ConfigValidationError as e:
        problems = list(e.problems)
        if json_out:
            print_json({"valid": False, "file": str(config), "kind": detected,
                        "problems": [{"field": p.field, "value": p.value, "message": p.message} for p in problems]})
        else:
            typer.echo(f"INVALID: {config} ({detected}): {len(problems)} problem(s)")
            for p in problems:
                typer.echo(f"  {p.field}: {p.message} (got {p.value!r})")
        raise typer.Exit(EXIT_PROBLEM) from None
    summary = summarize(obj)
    warnings = [str(w) for w in getattr(obj, "warnings", ()) or ()]
    if json_out:
        print_json({"valid": True, "file": str(config), "kind": detected, "summary": summary, "warnings": warnings})
    else:
        typer.echo(f"OK: {config} ({detected}: {', '.join(f'{v} {k}' for k, v in summary.items())})")
        for w in warnings:
            typer.echo(f"  warning: {w}")


def _policy_summary(pol: Any) -> dict[str, int]:
    out = {}
    for name in ("rules", "locks", "denies", "allows", "fallback_chains"):
        value = getattr(pol, name, None)
        if value is not None:
            try:
                out[name] = len(value)
            except TypeError:
                continue
    return out
