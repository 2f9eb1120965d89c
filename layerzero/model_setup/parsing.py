"""Reading a rules file: a models.yaml mapping validated into a :class:`~layerzero.model_setup.rules.RuleSet`.

Every problem is collected (not just the first) and names the file, the field and the value, so a server
operator fixes a rules file in one pass; kernel ids are checked against the kernel catalogue with
suggestions, and policy fragments are shape-checked here so a typo is reported against the rules file
rather than at the first model load.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.model_setup.arms import Arm, Experiment
from layerzero.model_setup.rules import MATCH_KEYS, Matcher, Overrides, Rule, RuleSet
from layerzero.operations import OPERATIONS, matches
from layerzero.policy.merge import LIST_SECTIONS, MAP_SECTIONS
from layerzero.policy.schema import TOP_LEVEL_KEYS
from layerzero.registry import get_global_kernel_registry

__all__ = ["Problems", "kernel_checker", "parse_arms", "parse_experiment", "parse_overrides", "parse_rules"]

_LIST_KEYS = LIST_SECTIONS
_MAP_KEYS = MAP_SECTIONS


class Problems:
    """Collects the problems of one source; called as ``bad(field, value, message)``."""

    def __init__(self, source: str | None):
        self.source = source
        self.items: list[ValidationProblem] = []

    def __call__(self, fld: str, value: Any, message: str) -> None:
        self.items.append(ValidationProblem(fld, value, message, self.source))


def parse_rules(data: Any, source: str | None = None, *, check_kernels: bool = True) -> RuleSet:
    """Validate a models.yaml mapping; every problem names file, field and value."""
    bad = Problems(source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigValidationError([ValidationProblem("<root>", type(data).__name__, "expected a mapping", source)])
    for key in data:
        if key not in ("version", "rules", "experiments"):
            bad(str(key), data[key], "unknown key; expected version, rules, experiments")
    if data.get("version", 1) != 1:
        bad("version", data.get("version"), "only version 1 is supported")
    kernel_check = kernel_checker() if check_kernels else None
    rules: list[Rule] = []
    for i, raw in enumerate(_list(data.get("rules"), "rules", bad)):
        where = f"rules[{i}]"
        if not isinstance(raw, Mapping):
            bad(where, raw, "expected a mapping with name, match, policy and/or kernels")
            continue
        _only(raw, ("name", "match", "policy", "kernels", "description"), where, bad)
        name = _name(raw.get("name"), f"{where}.name", bad, default=f"rule{i}")
        rules.append(Rule(name, _matcher(raw.get("match"), f"{where}.match", bad),
                          parse_overrides(raw, where, bad, kernel_check)))
    experiments: list[Experiment] = []
    for i, raw in enumerate(_list(data.get("experiments"), "experiments", bad)):
        exp = parse_experiment(raw, f"experiments[{i}]", bad, kernel_check)
        if exp is not None:
            if any(e.name == exp.name for e in experiments):
                bad(f"experiments[{i}].name", exp.name, "duplicate experiment name")
            experiments.append(exp)
    for i, r in enumerate(rules):
        if any(o.name == r.name for o in rules[:i]):
            bad(f"rules[{i}].name", r.name, "duplicate rule name")
    if bad.items:
        raise ConfigValidationError(bad.items, source)
    return RuleSet(tuple(rules), tuple(experiments), source)


def parse_experiment(raw: Any, where: str, bad: Callable[[str, Any, str], None],
                     kernel_check: Callable[[str], str | None] | None = None) -> Experiment | None:
    if not isinstance(raw, Mapping):
        bad(where, raw, "expected a mapping with name, match, seed, arms")
        return None
    _only(raw, ("name", "match", "seed", "arms", "description"), where, bad)
    name = _name(raw.get("name"), f"{where}.name", bad, default="experiment")
    seed = raw.get("seed", name)
    if not isinstance(seed, (str, int)) or isinstance(seed, bool):
        bad(f"{where}.seed", seed, "expected a string or integer seed")
        seed = name
    arms = parse_arms(raw.get("arms"), f"{where}.arms", bad, kernel_check)
    if not arms:
        return None
    return Experiment(name, _matcher(raw.get("match"), f"{where}.match", bad), str(seed), arms)


def parse_arms(raw: Any, where: str, bad: Callable[[str, Any, str], None],
               kernel_check: Callable[[str], str | None] | None = None) -> tuple[Arm, ...]:
    """Arms as a list of mappings (``name``, ``weight``, ``policy``, ``kernels``) or a mapping
    ``{name: {weight, policy, kernels}}``."""
    if isinstance(raw, Mapping):
        raw = [{"name": k, **(v or {})} if isinstance(v, Mapping) or v is None else {"name": k, "_bad": v}
               for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        bad(where, raw, "expected a non-empty list of arms")
        return ()
    arms: list[Arm] = []
    for i, a in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(a, Mapping) or "_bad" in a:
            bad(w, a.get("_bad") if isinstance(a, Mapping) else a, "expected a mapping with name, weight, policy, kernels")
            continue
        _only(a, ("name", "weight", "policy", "kernels", "description"), w, bad)
        name = _name(a.get("name"), f"{w}.name", bad, default=f"arm{i}")
        weight = a.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight != weight \
                or weight == float("inf"):
            bad(f"{w}.weight", weight, "expected a positive finite number")
            weight = 1
        if any(x.name == name for x in arms):
            bad(f"{w}.name", name, "duplicate arm name")
        arms.append(Arm(name, float(weight), parse_overrides(a, w, bad, kernel_check)))
    return tuple(arms)


def _only(raw: Mapping, keys: tuple[str, ...], where: str, bad) -> None:
    for key in raw:
        if key not in keys:
            bad(f"{where}.{key}", raw[key], f"unknown key; expected one of {', '.join(keys)}")


def _list(value: Any, where: str, bad) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        bad(where, value, "expected a list")
        return []
    return value


def _name(value: Any, where: str, bad, *, default: str) -> str:
    if value is None:
        bad(where, value, "required: a non-empty name")
        return default
    if not isinstance(value, str) or not value:
        bad(where, value, "expected a non-empty string")
        return default
    return value


def _matcher(raw: Any, where: str, bad) -> Matcher:
    if raw is None:
        return Matcher()
    if not isinstance(raw, Mapping):
        bad(where, raw, f"expected a mapping with any of {', '.join(MATCH_KEYS)}")
        return Matcher(model_type=("\x00never",))
    values: dict[str, tuple[str, ...]] = {}
    for key, v in raw.items():
        if key not in MATCH_KEYS:
            bad(f"{where}.{key}", v, f"unknown match field; use one of {', '.join(MATCH_KEYS)}")
            continue
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            bad(f"{where}.{key}", v, "expected a glob string or a non-empty list of them")
            continue
        values[key] = tuple(v)
    return Matcher(**values)


def parse_overrides(raw: Mapping, where: str, bad: Callable[[str, Any, str], None],
                    kernel_check: Callable[[str], str | None] | None) -> Overrides:
    """The ``policy`` and ``kernels`` of a rule, an arm or a caller's ``kernels=`` argument."""
    policy = raw.get("policy") or {}
    if not isinstance(policy, Mapping):
        bad(f"{where}.policy", policy, "expected a policy mapping (kernel_locks, kernel_denies, dispatch_rules, ...)")
        policy = {}
    else:
        policy = dict(policy)
        _check_policy_fragment(policy, f"{where}.policy", bad)
    kernels = raw.get("kernels") or {}
    out: dict[str, str] = {}
    if not isinstance(kernels, Mapping):
        bad(f"{where}.kernels", kernels, "expected a mapping operation -> kernel id, e.g. {rms_norm: torch_rms_norm}")
    else:
        for op, kid in kernels.items():
            if not isinstance(op, str) or not any(matches(op, o) for o in OPERATIONS):
                bad(f"{where}.kernels.{op}", op, f"unknown operation; use one of {', '.join(OPERATIONS)}")
                continue
            if not isinstance(kid, str) or not kid:
                bad(f"{where}.kernels.{op}", kid, "expected a kernel id string")
                continue
            if kernel_check is not None:
                err = kernel_check(kid)
                if err:
                    bad(f"{where}.kernels.{op}", kid, err)
                    continue
            out[op] = kid
    return Overrides(policy, out)


def _check_policy_fragment(policy: dict, where: str, bad) -> None:
    """Full validation belongs to layerzero.policy; here the fragment's shape is checked early so a typo
    is reported against the rules file rather than at the first model load."""
    for key, value in policy.items():
        if key not in TOP_LEVEL_KEYS:
            bad(f"{where}.{key}", value, f"unknown policy key; use one of {', '.join(TOP_LEVEL_KEYS)}")
        elif key in _LIST_KEYS and not isinstance(value, list):
            bad(f"{where}.{key}", value, "expected a list")
        elif key in _MAP_KEYS and not isinstance(value, Mapping):
            bad(f"{where}.{key}", value, "expected a mapping")


def kernel_checker() -> Callable[[str], str | None] | None:
    """A function returning an error for an unknown kernel id (with suggestions), or None when the
    kernel catalogue is not importable (then the policy loader checks ids later)."""
    try:
        registry = get_global_kernel_registry()
    except Exception:
        return None

    def check(kid: str) -> str | None:
        try:
            registry.get(kid)
        except KeyError as exc:
            return str(exc)
        return None

    return check
