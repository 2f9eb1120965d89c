"""Per-model rules and A/B experiments (``configs/models.yaml``).

A fleet serves many models; which kernels suit one (a Gemma norm that must stay in fp32, a model whose
head_dim a backend cannot take) is a fact about that model, so it lives in a rules file matched on the
model's config rather than in code. Experiments split models between arms (policies or kernel maps) to
compare kernels in production; the split is a hash of a seed and the model id, never ``random()``, so a
model lands in the same arm in every process and on every restart (sticky assignment).

File format::

    version: 1
    rules:
      - name: gemma-norms
        match: {model_type: [gemma, gemma2], architecture: "*ForCausalLM", name_or_path: "google/*"}
        policy: {kernel_denies: ["liger_rms_norm"]}      # a layerzero policy fragment, merged
        kernels: {rms_norm: torch_rms_norm}               # operation -> kernel id (becomes kernel_locks)
    experiments:
      - name: rms-norm-kernel
        match: {model_type: [llama]}
        seed: "2026-11"
        arms:
          - {name: control, weight: 50}
          - {name: reference, weight: 50, kernels: {rms_norm: reference_rms_norm}}

Match fields are AND-ed; a list means any of; strings are globs (``fnmatch``). Rules apply in file
order, later ones overriding earlier ones; then the experiment arm; then what the caller passes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.operations import OPERATIONS, matches
from layerzero.policy.merge import LIST_SECTIONS, MAP_SECTIONS, merge_policy

RULES_ENV = "LAYERZERO_HF_RULES"
MATCH_KEYS: tuple[str, ...] = ("model_type", "architecture", "name_or_path")
_LIST_KEYS = LIST_SECTIONS
_MAP_KEYS = MAP_SECTIONS


# ---------------------------------------------------------------------------------------------- model facts
@dataclass(frozen=True)
class ModelFacts:
    """What rules match on, read from a Transformers config (and the model class when there is one)."""

    model_type: str | None
    architectures: tuple[str, ...]
    name_or_path: str

    @classmethod
    def of(cls, config: Any, model: Any = None) -> "ModelFacts":
        archs = tuple(getattr(config, "architectures", None) or ())
        if model is not None and type(model).__name__ not in archs:
            archs = (type(model).__name__, *archs)
        name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or ""
        return cls(getattr(config, "model_type", None), archs, str(name))


@dataclass(frozen=True)
class Matcher:
    model_type: tuple[str, ...] = ()
    architecture: tuple[str, ...] = ()
    name_or_path: tuple[str, ...] = ()

    def __call__(self, facts: ModelFacts) -> bool:
        if self.model_type and not _any_glob(self.model_type, [facts.model_type or ""]):
            return False
        if self.architecture and not _any_glob(self.architecture, facts.architectures):
            return False
        if self.name_or_path and not _any_glob(self.name_or_path, [facts.name_or_path]):
            return False
        return True


def _any_glob(patterns: Iterable[str], values: Iterable[str]) -> bool:
    vals = list(values)
    return any(fnmatchcase(v, p) for p in patterns for v in vals)


# ---------------------------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class Overrides:
    """A policy fragment and a kernel map; what a rule or an arm contributes."""

    policy: Mapping[str, Any] = field(default_factory=dict)
    kernels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    name: str
    match: Matcher
    overrides: Overrides


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    overrides: Overrides


@dataclass(frozen=True)
class Experiment:
    name: str
    match: Matcher
    seed: str
    arms: tuple[Arm, ...]

    def assign(self, model_id: str) -> Arm:
        """Sticky arm of ``model_id``: a point in [0, 1) from SHA-256 of (seed, experiment, id) walks the
        cumulative weights. Same inputs, same arm, in every process."""
        digest = hashlib.sha256(f"{self.seed}\x00{self.name}\x00{model_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2.0**64
        total = sum(a.weight for a in self.arms)
        acc = 0.0
        for arm in self.arms:
            acc += arm.weight / total
            if point < acc:
                return arm
        return self.arms[-1]

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigValidationError(
            [ValidationProblem("arm", name, f"experiment {self.name!r} has arms {[a.name for a in self.arms]}")]
        )


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    source: str | None = None


@dataclass(frozen=True)
class Resolution:
    """Everything the rules decided for one model: the merged policy fragment and kernel map, the rule
    names that matched, and the experiment arm (if any)."""

    policy: Mapping[str, Any]
    kernels: Mapping[str, str]
    rules: tuple[str, ...] = ()
    experiment: str | None = None
    arm: str | None = None
    model_id: str | None = None

    def policy_mapping(self) -> dict[str, Any] | None:
        """The effective policy as a mapping (the kernel map folded into ``kernel_locks``), or None when
        nothing overrides the default policy."""
        merged = merge_policy({}, self.policy)
        if self.kernels:
            merged = merge_policy(merged, {"kernel_locks": dict(self.kernels)})
        return merged or None


# ---------------------------------------------------------------------------------------------- parsing
class _Problems:
    def __init__(self, source: str | None):
        self.source = source
        self.items: list[ValidationProblem] = []

    def __call__(self, fld: str, value: Any, message: str) -> None:
        self.items.append(ValidationProblem(fld, value, message, self.source))


def parse_rules(data: Any, source: str | None = None, *, check_kernels: bool = True) -> RuleSet:
    """Validate a models.yaml mapping; every problem names file, field and value."""
    bad = _Problems(source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigValidationError([ValidationProblem("<root>", type(data).__name__, "expected a mapping", source)])
    for key in data:
        if key not in ("version", "rules", "experiments"):
            bad(str(key), data[key], "unknown key; expected version, rules, experiments")
    if data.get("version", 1) != 1:
        bad("version", data.get("version"), "only version 1 is supported")
    kernel_check = _kernel_checker() if check_kernels else None
    rules: list[Rule] = []
    for i, raw in enumerate(_list(data.get("rules"), "rules", bad)):
        where = f"rules[{i}]"
        if not isinstance(raw, Mapping):
            bad(where, raw, "expected a mapping with name, match, policy and/or kernels")
            continue
        _only(raw, ("name", "match", "policy", "kernels", "description"), where, bad)
        name = _name(raw.get("name"), f"{where}.name", bad, default=f"rule{i}")
        rules.append(Rule(name, _matcher(raw.get("match"), f"{where}.match", bad),
                          _overrides(raw, where, bad, kernel_check)))
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
        arms.append(Arm(name, float(weight), _overrides(a, w, bad, kernel_check)))
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


def _overrides(raw: Mapping, where: str, bad, kernel_check) -> Overrides:
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
    try:
        from layerzero.policy.schema import TOP_LEVEL_KEYS
    except ImportError:  # the policy package is optional at this layer
        TOP_LEVEL_KEYS = ("version", "defaults", "dispatch_rules", "kernel_locks", "kernel_denies",
                          "kernel_allows", "fallback_chains")
    for key, value in policy.items():
        if key not in TOP_LEVEL_KEYS:
            bad(f"{where}.{key}", value, f"unknown policy key; use one of {', '.join(TOP_LEVEL_KEYS)}")
        elif key in _LIST_KEYS and not isinstance(value, list):
            bad(f"{where}.{key}", value, "expected a list")
        elif key in _MAP_KEYS and not isinstance(value, Mapping):
            bad(f"{where}.{key}", value, "expected a mapping")


def _kernel_checker() -> Callable[[str], str | None] | None:
    """A function returning an error for an unknown kernel id (with suggestions), or None when the
    kernel catalogue is not importable (then the policy loader checks ids later)."""
    try:
        from layerzero.registry import get_global_kernel_registry

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


# ---------------------------------------------------------------------------------------------- loading
def load_rules(source: str | Path | Mapping[str, Any] | RuleSet | None = None) -> RuleSet:
    """A RuleSet from a path, a mapping, a RuleSet, or (None) the file named by ``$LAYERZERO_HF_RULES``, else
    the shipped ``configs/models.yaml`` (so a server can change rules without code)."""
    if isinstance(source, RuleSet):
        return source
    if isinstance(source, Mapping):
        return parse_rules(source, "<mapping>")
    from layerzero_hf.specs import _read_yaml, _read_yaml_file, data_files

    if source is None and os.environ.get(RULES_ENV):
        source = os.environ[RULES_ENV]
    if source is None:
        files = data_files("configs")
        if "models" not in files:
            return RuleSet()
        label, text = files["models"]
        return parse_rules(_read_yaml(text, label), label)
    path = Path(source)
    if not path.exists():
        raise ConfigValidationError([ValidationProblem(
            "config", str(source), f"rules file not found (from patch(config=...) or ${RULES_ENV}); fix: check "
            "the path")])
    return parse_rules(_read_yaml_file(path, f"rules file (from patch(config=...) or ${RULES_ENV})"), str(path))


def resolve(
    ruleset: RuleSet,
    facts: ModelFacts,
    *,
    model_id: str | None = None,
    arms: Any = None,
    arm: str | None = None,
    experiment: str | None = None,
    policy: Mapping[str, Any] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> Resolution:
    """Apply matching rules, then the experiment arm, then the caller's policy/kernels (last wins).

    ``arms`` replaces the matched experiment's arms for this call (or defines an experiment named
    ``experiment`` or "patch" when none matches); ``arm`` forces an arm by name (no hashing).
    """
    merged: dict[str, Any] = {}
    kmap: dict[str, str] = {}
    names: list[str] = []
    for rule in ruleset.rules:
        if rule.match(facts):
            merged = merge_policy(merged, rule.overrides.policy)
            kmap.update(rule.overrides.kernels)
            names.append(rule.name)
    exp = _pick_experiment(ruleset, facts, experiment)
    if arms is not None:
        bad = _Problems("patch(arms=...)")
        parsed = parse_arms(arms, "arms", bad, _kernel_checker())
        if bad.items:
            raise ConfigValidationError(bad.items, "patch(arms=...)")
        name = exp.name if exp is not None else (experiment or "patch")
        seed = exp.seed if exp is not None else name
        exp = Experiment(name, Matcher(), seed, parsed)
    mid = model_id if model_id is not None else (facts.name_or_path or (facts.architectures or ("",))[0])
    chosen: Arm | None = None
    if exp is not None:
        chosen = exp.arm(arm) if arm is not None else exp.assign(mid)
        merged = merge_policy(merged, chosen.overrides.policy)
        kmap.update(chosen.overrides.kernels)
    elif arm is not None:
        raise ConfigValidationError([ValidationProblem(
            "arm", arm, "no experiment matches this model; pass arms=... or add an experiment to the rules file")])
    if policy:
        merged = merge_policy(merged, policy)
    if kernels:
        bad = _Problems("patch(kernels=...)")
        ov = _overrides({"kernels": dict(kernels)}, "kernels", bad, _kernel_checker())
        if bad.items:
            raise ConfigValidationError(bad.items, "patch(kernels=...)")
        kmap.update(ov.kernels)
    return Resolution(merged, kmap, tuple(names), exp.name if exp else None, chosen.name if chosen else None, mid)


def _pick_experiment(ruleset: RuleSet, facts: ModelFacts, name: str | None) -> Experiment | None:
    if name is not None:
        for e in ruleset.experiments:
            if e.name == name:
                return e
        return None
    for e in ruleset.experiments:
        if e.match(facts):
            return e
    return None


def arm_distribution(experiment: Experiment, model_ids: Sequence[str]) -> dict[str, int]:
    """How many of ``model_ids`` each arm receives (for checking a split before rolling it out)."""
    counts = {a.name: 0 for a in experiment.arms}
    for mid in model_ids:
        counts[experiment.assign(mid).name] += 1
    return counts
