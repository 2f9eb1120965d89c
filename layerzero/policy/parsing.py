"""Policy text to data: the YAML document a policy validator can walk, and the hash that names it.

Parsing goes through :mod:`layerzero.config_files` (size and alias limits, safe construction only). Two
checks are added here because only a policy needs them: a cheap guard against deeply nested flow
collections (PyYAML takes seconds on ``[[[[...`` before failing), and duplicate keys, which the composed
node graph shows and a plain ``safe_load`` would silently resolve to the last one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import yaml

from layerzero.config_files import DOCUMENT, compose_yaml, construct_yaml
from layerzero.errors import ConfigValidationError
from layerzero.policy.schema import MISSING, Problems, clip, join_path, q

__all__ = ["MAX_FLOW_DEPTH", "check_duplicate_keys", "flow_depth_exceeds", "mapping_hash", "parse_yaml", "text_hash"]

MAX_FLOW_DEPTH = 64


def flow_depth_exceeds(text: str, limit: int) -> bool:
    """Cheap over-estimate guard: PyYAML's scanner is quadratic in flow nesting and its composer recursive,
    so ``[[[[...`` thousands deep takes seconds before failing. Count ``[``/``{`` outside quotes and
    comments; no real policy nests anywhere near ``limit``."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    quote = ""
    prev = "\n"
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and prev in " \t\n":
            quote = "\n"  # skip the comment up to the end of the line
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
    return False


def parse_yaml(text: str, problems: Problems) -> Any:
    """The parsed document, or MISSING (with a problem recorded) when there is none to validate."""
    if flow_depth_exceeds(text, MAX_FLOW_DEPTH):
        problems.add(DOCUMENT, None, f"the document nests lists/mappings more than {MAX_FLOW_DEPTH} levels deep; "
                     "fix: flatten it")
        return MISSING
    try:
        node = compose_yaml(text, problems.source)
        if node is None:
            problems.add(DOCUMENT, text[:80], "the policy is empty; fix: write at least `version: \"1.0\"` (see "
                         "configs/default_policy.yaml)")
            return MISSING
        check_duplicate_keys(node, problems)
        return construct_yaml(node, problems.source)
    except ConfigValidationError as e:
        for p in e.problems:
            problems.add(p.field, p.value, p.message)
    return MISSING


def check_duplicate_keys(root: yaml.Node, problems: Problems) -> None:
    """Report keys that appear twice in one mapping; safe_load would keep only the last silently."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    budget = 200_000
    while stack and budget > 0:
        node, path = stack.pop()
        budget -= 1
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = key_node.value
                    child = join_path(path, key)
                    if key in first_line:
                        problems.add(child, key, f"duplicate key {q(key)} (lines {first_line[key]} and "
                                     f"{key_node.start_mark.line + 1}); fix: keep one of them")
                    else:
                        first_line[key] = key_node.start_mark.line + 1
                    stack.append((value_node, child))
                else:
                    stack.append((value_node, path))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{path}[{i}]"))


def mapping_hash(data: Mapping[str, Any]) -> str:
    """sha256 of a mapping's content, key order ignored. Each container is digested once (by identity),
    so shared sub-structures (YAML aliases) cost nothing extra and cycles terminate."""
    memo: dict[int, bytes] = {}

    def digest(value: Any, depth: int) -> bytes:
        if isinstance(value, (Mapping, list, tuple)):
            key = id(value)
            got = memo.get(key)
            if got is not None:
                return got
            memo[key] = b"<cycle>"
            if depth > 200:
                out = b"<deep>"
            elif isinstance(value, Mapping):
                parts = sorted(digest(k, depth + 1) + b":" + digest(v, depth + 1) for k, v in value.items())
                out = hashlib.sha256(b"map{" + b",".join(parts) + b"}").digest()
            else:
                out = hashlib.sha256(b"seq[" + b",".join(digest(v, depth + 1) for v in value) + b"]").digest()
            memo[key] = out
            return out
        if isinstance(value, int) and not isinstance(value, bool):
            text = f"int:{value:x}"  # hex: no str-digit limit for huge ints
        elif isinstance(value, (str, float, bool, type(None))):
            text = f"{type(value).__name__}:{value!r}"
        else:
            text = f"{type(value).__name__}:{clip(value)!r}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    return digest(data, 0).hex()


def text_hash(text: str) -> str:
    """sha256 of a policy's source text (lone surrogates kept): the ``config_hash`` of a parsed policy."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
