"""The one guarded way LayerZero reads a config file and parses YAML.

Every YAML the project reads (policies, per-model rules, architecture patch specs, tuning shape lists)
goes through here, so each gets the same protection against files that are hostile or simply wrong:

* **Special files never block.** A path is opened with ``O_NONBLOCK`` and checked with ``fstat`` before a
  byte is read: a named pipe, a socket or a device is rejected at once instead of hanging the process
  (``open()`` on a FIFO without a writer blocks forever).
* **Size limit.** At most ``max_bytes`` are read; a bigger file is rejected, not truncated.
* **Alias bombs are rejected while composing.** A YAML alias re-uses a node, so a 400-byte document can
  stand for billions of nodes ("billion laughs"); walking, hashing or printing it exhausts memory. The
  composer counts aliases and the size the document would have with every alias expanded, and stops at
  the first node that crosses :data:`MAX_YAML_ALIASES` or :data:`MAX_YAML_NODES`. A document that contains
  itself (``a: &a [*a]``) is rejected too.
* **Safe construction only** (``SafeLoader``: no Python objects), never ``yaml.load``.
* **Bounded messages.** Values quoted in errors are clipped to about :data:`CLIP_CHARS` characters.

Failures are :class:`~layerzero.errors.ConfigValidationError` naming the file, the value and the fix. The
low-level :func:`read_regular_file` raises :class:`OSError` instead, for callers (the hot-reload watcher,
the autotune cache) that treat an unreadable file as a state rather than a mistake.

This module sits at the bottom layer: it imports nothing from LayerZero but the errors.
"""

from __future__ import annotations

import errno
import os
import reprlib
import stat
from dataclasses import dataclass
from typing import Any

import yaml

from layerzero.errors import ConfigValidationError, ValidationProblem

__all__ = [
    "CLIP_CHARS",
    "DOCUMENT",
    "MAX_CONFIG_BYTES",
    "MAX_YAML_ALIASES",
    "MAX_YAML_NODES",
    "NotARegularFileError",
    "FileTooLargeError",
    "YamlLimits",
    "clip_text",
    "clip_value",
    "compose_yaml",
    "construct_yaml",
    "load_yaml_file",
    "load_yaml_text",
    "read_config_text",
    "read_regular_file",
]

DOCUMENT = "<document>"
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 100_000
CLIP_CHARS = 200

_repr = reprlib.Repr()
_repr.maxstring = CLIP_CHARS
_repr.maxother = CLIP_CHARS
_repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxlevel = 3


@dataclass(frozen=True)
class YamlLimits:
    """Limits on one YAML document: aliases (``*name`` uses) and nodes counted with aliases expanded."""

    max_aliases: int = MAX_YAML_ALIASES
    max_nodes: int = MAX_YAML_NODES


DEFAULT_LIMITS = YamlLimits()


class NotARegularFileError(OSError):
    """The path names a FIFO, socket, device or directory: config files must be regular files."""


class FileTooLargeError(OSError):
    """The file is bigger than the limit for its kind of config."""


def clip_text(value: Any, limit: int = CLIP_CHARS) -> str:
    """``repr`` of a value for an error message, never longer than about ``limit`` characters."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a pathological object: never let error reporting fail
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Clipped(str):
    """Text that stands for a clipped value: its repr is itself, so messages do not quote it twice."""

    def __repr__(self) -> str:
        return str(self)


def clip_value(value: Any) -> Any:
    """The value itself when it is small and plain, else a bounded stand-in whose repr is the clipped
    repr: what a :class:`~layerzero.errors.ValidationProblem` should carry."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int) and value.bit_length() <= 128:
        return value
    if isinstance(value, str) and len(value) <= CLIP_CHARS:
        return value
    return _Clipped(clip_text(value))


def _problem(source: str | None, value: Any, message: str, field: str = DOCUMENT) -> ConfigValidationError:
    return ConfigValidationError([ValidationProblem(field, clip_value(value), message, source)], source=source)


# ============================================================================================== files
_KIND = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((what for test, what in _KIND if test(mode)), "not a regular file")


def read_regular_file(path: str | os.PathLike[str], max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``max_bytes`` of them.

    Raises :class:`NotARegularFileError` for anything but a regular file, checked on the open descriptor
    (no race with a rename), without ever blocking: the open is non-blocking, so a FIFO with no writer
    cannot hang the caller. Raises :class:`FileTooLargeError` past ``max_bytes`` and the usual
    :class:`OSError` (missing, permission denied) otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(errno.EINVAL, f"{_kind(st.st_mode)}, not a regular file", os.fspath(path))
        if st.st_size > max_bytes:
            raise FileTooLargeError(errno.EFBIG, f"{st.st_size} bytes, over the limit of {max_bytes}", os.fspath(path))
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # the file grew after fstat
            raise FileTooLargeError(errno.EFBIG, f"more than {max_bytes} bytes", os.fspath(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_config_text(path: str | os.PathLike[str], what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES,
                     field: str = DOCUMENT, text_api: str = "the matching parse function") -> str:
    """The UTF-8 text of a config file, or :class:`ConfigValidationError` naming ``field``, the path and
    the fix (``what`` names the kind of file in messages: "policy", "rules file"...; ``text_api`` is what
    to call instead when the "path" is really YAML text)."""
    try:
        label = os.fsdecode(path)
    except (TypeError, ValueError):
        label = None
    source = label if label is not None and "\n" not in label and len(label) <= 1024 else "<not a path>"
    try:
        raw = read_regular_file(path, max_bytes)
    except NotARegularFileError as e:
        fix = "point to a .yaml file" if "directory" in str(e.strerror) else "config files must be regular files"
        raise _problem(source, label, f"the {what} path is {e.strerror}; fix: {fix}", field) from None
    except FileTooLargeError as e:
        raise _problem(source, f"{e.strerror}", f"the {what} is too large; fix: point to the right file (limit "
                       f"{max_bytes} bytes)", field) from None
    except FileNotFoundError:
        fix = f"check the path (relative paths are resolved from the current directory {os.getcwd()!r})"
        if label is not None and ("\n" in label or ": " in label):
            fix = f"this looks like YAML text, not a path: use {text_api}"
        raise _problem(source, label, f"{what} not found; fix: {fix}", field) from None
    except (ValueError, TypeError) as e:  # e.g. an embedded NUL byte in the path
        raise _problem(source, label, f"not a usable file path ({e}); fix: pass a plain path", field) from None
    except OSError as e:
        raise _problem(source, label, f"cannot read the {what} ({e.strerror or e}); fix: check permissions",
                       field) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _problem(source, f"byte {e.start}", f"the {what} is not UTF-8 text (binary?); fix: save it as UTF-8 "
                       "YAML", field) from None


# ============================================================================================== YAML
class _LimitExceeded(Exception):
    def __init__(self, message: str, mark: Any = None):
        self.message = message
        self.where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None
        super().__init__(message)


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and the expanded size of every node as it composes it.

    A node's expanded size is 1 plus its children's; an alias contributes the full size of the node it
    names, computed once, so the count is cheap even when the expansion would be astronomically large.
    An alias to a node still being composed is a document that contains itself."""

    def __init__(self, stream: str, limits: YamlLimits):
        super().__init__(stream)
        self._limits = limits
        self._aliases = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > self._limits.max_aliases:
                raise _LimitExceeded(
                    f"the document uses more than {self._limits.max_aliases} YAML aliases (*name); fix: write "
                    "the values out (a config needs few aliases; many are the mark of an alias bomb)")
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _LimitExceeded(f"the YAML alias *{event.anchor} refers to a node that contains it (the "
                                     "document refers to itself); fix: remove the alias from inside its anchor", event.start_mark)
            return node
        node = super().compose_node(parent, index)
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        if size > self._limits.max_nodes:
            raise _LimitExceeded(
                f"the document expands to more than {self._limits.max_nodes} YAML nodes once its aliases are "
                "resolved (an alias bomb?); fix: write a smaller config without nested aliases", node.start_mark)
        self._sizes[id(node)] = size
        return node


def _yaml_problem(exc: yaml.YAMLError, source: str | None) -> ConfigValidationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError):
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        what = exc.problem or exc.context or "syntax error"
        fix = f"correct the YAML at {where}"
        if "another document" in what:
            fix = "a config file holds one YAML document: remove the second '---' and what follows or merge them"
        return _problem(source, where, f"YAML syntax error: {what[:CLIP_CHARS]}; fix: {fix}")
    return _problem(source, str(exc), f"not valid YAML ({type(exc).__name__}); fix: save the file as YAML text")


def compose_yaml(text: str, source: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> yaml.Node | None:
    """The node graph of one YAML document (None for an empty one), within ``limits``. Raises only
    :class:`ConfigValidationError` (syntax errors, limits, nesting too deep) naming ``source``."""
    if not isinstance(text, str):
        raise _problem(source, text, f"YAML text must be a str, got {type(text).__name__}; fix: decode it first")
    loader: _GuardedLoader | None = None
    try:
        loader = _GuardedLoader(text, limits)  # the reader rejects control characters right here
        return loader.get_single_node()
    except _LimitExceeded as e:
        raise _problem(source, e.where, e.message) from None
    except yaml.YAMLError as e:
        raise _yaml_problem(e, source) from None
    except RecursionError:
        raise _problem(source, None, "the document is nested too deeply; fix: flatten it") from None
    finally:
        if loader is not None:
            loader.dispose()


def construct_yaml(node: yaml.Node | None, source: str | None = None) -> Any:
    """Python values (dicts, lists, scalars only) of a node graph from :func:`compose_yaml`."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_problem(e, source) from None
    except RecursionError:
        raise _problem(source, None, "the document is nested too deeply; fix: flatten it") from None
    except (ValueError, OverflowError, MemoryError) as e:  # e.g. an integer past Python's digit limit
        raise _problem(source, str(e), f"a value cannot be read ({type(e).__name__}); fix: check for absurdly "
                       "long numbers or strings") from None
    finally:
        loader.dispose()


def load_yaml_text(text: str, source: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Parse one YAML document safely (see the module docstring); None for an empty document."""
    return construct_yaml(compose_yaml(text, source, limits), source)


def load_yaml_file(path: str | os.PathLike[str], what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES,
                   limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Read a regular file (non-blocking, size-limited) and parse it as one guarded YAML document."""
    text = read_config_text(path, what, max_bytes)
    return load_yaml_text(text, os.fsdecode(path), limits)
