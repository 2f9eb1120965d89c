"""Architecture patch specs: ``patches/<arch>.yaml`` loaded and validated into immutable objects.

An architecture is described as data (which module classes hold an RMSNorm, which attention module calls
a module-global RoPE function, how the MLP is laid out) so one generic mechanism
(:mod:`layerzero_hf.planner`) patches every architecture and a new Transformers release is a YAML edit,
not a new ``apply_*`` function per architecture. Validation collects every problem with file, field and value.

File format::

    version: 1
    model_types: [llama]                      # config.model_type values this file serves
    module: transformers.models.llama.modeling_llama
    attention: {classes: [LlamaAttention]}    # get ``_layerzero_orchestrator``
    patches:
      - name: rms_norm                        # unique within the file, shown in reports
        kind: rms_norm                        # a registered kind: rms_norm | layer_norm | rope | mlp
        match: {classes: [LlamaRMSNorm], paths: ["*"]}
        params: {eps_attr: variance_epsilon, offset: 0.0, casting: llama}

Each kind's ``params`` are validated against the schema registered with it
(:func:`layerzero_hf.kinds.register_patch_kind`; the shipped kinds are in :mod:`layerzero_hf.builtin_kinds`).
RoPE params: ``function`` (the module-global name the attention forward calls), ``layout`` (bhsd | bshd),
``interleaved``, ``tables`` (full: HF's head_dim-wide cos/sin; half: gpt-oss's half-width tables).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Mapping

from layerzero.config_files import load_yaml_file, load_yaml_text
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.data_files import packaged_data_files
from layerzero_hf.kinds import get_patch_kind, patch_kinds


@dataclass(frozen=True)
class Match:
    """Which modules a patch applies to: class names (exact) AND qualified-name globs (``*.mlp``)."""

    classes: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def __call__(self, qualname: str, module: Any) -> bool:
        if self.classes and type(module).__name__ not in self.classes:
            return False
        if self.paths and not any(fnmatchcase(qualname, p) for p in self.paths):
            return False
        return bool(self.classes or self.paths)


@dataclass(frozen=True)
class PatchSpec:
    """One replacement: what to match, what kind of replacement, and its parameters."""

    name: str
    kind: str
    match: Match
    params: Mapping[str, Any] = field(default_factory=dict)

    def param(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class ArchSpec:
    """Every patch of one architecture, plus where it came from (for reports and errors)."""

    name: str
    model_types: tuple[str, ...]
    module: str | None
    attention_classes: tuple[str, ...]
    patches: tuple[PatchSpec, ...]
    source: str

    def patches_of(self, kind: str) -> tuple[PatchSpec, ...]:
        return tuple(p for p in self.patches if p.kind == kind)


# ---------------------------------------------------------------------------------------------- parsing
def parse_arch_spec(data: Any, source: str, name: str | None = None) -> ArchSpec:
    """Validate one patch file's mapping. Raises ConfigValidationError listing every problem."""
    problems: list[ValidationProblem] = []

    def bad(fld: str, value: Any, message: str) -> None:
        problems.append(ValidationProblem(fld, value, message, source))

    if not isinstance(data, Mapping):
        raise ConfigValidationError([ValidationProblem("<root>", type(data).__name__, "expected a mapping", source)])
    known = {"version", "model_types", "module", "attention", "patches", "name", "description"}
    for key in data:
        if key not in known:
            bad(str(key), data[key], f"unknown key; expected one of {sorted(known)}")
    if data.get("version", 1) != 1:
        bad("version", data.get("version"), "only version 1 is supported")
    model_types = _str_list(data.get("model_types"), "model_types", bad, required=True)
    module = data.get("module")
    if module is not None and not isinstance(module, str):
        bad("module", module, "expected a dotted module name like transformers.models.llama.modeling_llama")
        module = None
    attention = data.get("attention") or {}
    attention_classes: tuple[str, ...] = ()
    if not isinstance(attention, Mapping):
        bad("attention", attention, "expected a mapping with 'classes'")
    else:
        attention_classes = _str_list(attention.get("classes"), "attention.classes", bad, required=False)
    patches: list[PatchSpec] = []
    raw = data.get("patches")
    if not isinstance(raw, list) or not raw:
        bad("patches", raw, "expected a non-empty list of patches")
        raw = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        spec = _parse_patch(entry, f"patches[{i}]", bad)
        if spec is None:
            continue
        if spec.name in seen:
            bad(f"patches[{i}].name", spec.name, "duplicate patch name; names must be unique in a file")
        seen.add(spec.name)
        patches.append(spec)
    if problems:
        raise ConfigValidationError(problems, source)
    return ArchSpec(
        name=name or (model_types[0] if model_types else "?"),
        model_types=model_types,
        module=module,
        attention_classes=attention_classes,
        patches=tuple(patches),
        source=source,
    )


def _str_list(value: Any, fld: str, bad, *, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            bad(fld, value, "required: a list of strings")
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        bad(fld, value, "expected a list of non-empty strings")
        return ()
    return tuple(value)


def _parse_patch(entry: Any, where: str, bad) -> PatchSpec | None:
    if not isinstance(entry, Mapping):
        bad(where, entry, "expected a mapping with name, kind, match, params")
        return None
    for key in entry:
        if key not in ("name", "kind", "match", "params", "description"):
            bad(f"{where}.{key}", entry[key], "unknown key; expected name, kind, match, params, description")
    kind = entry.get("kind")
    registered = get_patch_kind(kind) if isinstance(kind, str) else None
    if registered is None:
        bad(f"{where}.kind", kind, f"unknown patch kind; use one of {', '.join(patch_kinds())} (or register one "
            "with layerzero_hf.register_patch_kind)")
        return None
    name = entry.get("name", kind)
    if not isinstance(name, str) or not name:
        bad(f"{where}.name", name, "expected a non-empty string")
        name = kind
    m = entry.get("match")
    if not isinstance(m, Mapping):
        bad(f"{where}.match", m, "expected a mapping with 'classes' and/or 'paths'")
        return None
    for key in m:
        if key not in ("classes", "paths"):
            bad(f"{where}.match.{key}", m[key], "unknown key; expected classes or paths")
    match = Match(
        classes=_str_list(m.get("classes"), f"{where}.match.classes", bad, required=False),
        paths=_str_list(m.get("paths"), f"{where}.match.paths", bad, required=False),
    )
    if not match.classes and not match.paths:
        bad(f"{where}.match", dict(m), "needs at least one of classes or paths")
    params = registered.validate(entry.get("params") or {}, f"{where}.params", bad)
    return PatchSpec(name=name, kind=kind, match=match, params=params)


# ---------------------------------------------------------------------------------------------- loading
def _read_yaml(text: str, source: str) -> Any:
    """Parse YAML text through the guarded parser (alias/size limits, safe construction only)."""
    return load_yaml_text(text, source)


def _read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file through the guarded reader (regular files only, never blocks on a FIFO,
    size and alias limits); every failure is a ConfigValidationError naming the file."""
    return load_yaml_file(path, what)


def load_arch_spec(path: str | Path) -> ArchSpec:
    """Load and validate one patch file from disk."""
    p = Path(path)
    return parse_arch_spec(_read_yaml_file(p, "arch spec file"), str(p), name=p.stem)


def data_files(folder: str) -> dict[str, tuple[str, str]]:
    """``{stem: (source label, text)}`` of the YAML files shipped in ``folder`` ("patches" or "configs"),
    found like every packaged data file (:func:`layerzero.data_files.packaged_data_files`: package data,
    else the source checkout)."""
    return {f.name[:-5]: (str(f), f.read_text()) for f in packaged_data_files(folder, ".yaml")}


_lock = threading.Lock()
_builtin: dict[str, ArchSpec] | None = None


def builtin_specs() -> dict[str, ArchSpec]:
    """Every shipped architecture spec keyed by file stem (validated once, cached)."""
    global _builtin
    if _builtin is None:
        with _lock:
            if _builtin is None:
                specs: dict[str, ArchSpec] = {}
                problems: list[ValidationProblem] = []
                for stem, (source, text) in data_files("patches").items():
                    try:
                        specs[stem] = parse_arch_spec(_read_yaml(text, source), source, name=stem)
                    except ConfigValidationError as exc:
                        problems.extend(exc.problems)
                if problems:
                    raise ConfigValidationError(problems, "patches/")
                _builtin = specs
    return _builtin


def spec_for(model_type: str | None, extra: Iterable[ArchSpec] = ()) -> ArchSpec | None:
    """The spec serving ``model_type``: user-supplied specs first, then the shipped ones."""
    if model_type is None:
        return None
    for spec in (*extra, *builtin_specs().values()):
        if model_type in spec.model_types:
            return spec
    return None
