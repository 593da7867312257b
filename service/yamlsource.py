"""YAML files people edit (policies, scenarios, corpora): parsing with positions, and
validation errors as ``file:line:col: field: message`` with the nearest valid key suggested.

Shared by `policy` and `replay` so that every file a person writes fails the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

Positions = dict[tuple, tuple[int, int]]


class SourceError(ValueError):
    """A file that cannot be used; ``errors`` are ``file:line:col: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class LocatedErrors(ValueError):
    """Raised by a model validator: several errors, each at its own path in the document."""

    def __init__(self, located: list[tuple[tuple, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in located))
        self.located = located


def suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(
    text: str, source: str, what: str, error: type[SourceError] = SourceError
) -> tuple[dict, Positions]:
    """Parse YAML into (document, key path -> (line, column)); duplicate keys are errors.

    YAML itself lets a later key silently replace an earlier one, which hides edits.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise error([f"{where}: YAML syntax: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(doc, dict):
        raise error([f"{source}:1:1: {what}"])
    duplicates = _duplicate_keys(node, source)
    if duplicates:
        raise error(duplicates)
    return doc, positions(node)


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[str]:
    errors: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                errors.append(f"{source}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: "
                              f"duplicate key {name!r} (first on line {seen[name]})")  # fmt: skip
            else:
                seen[name] = key.start_mark.line + 1
            errors += _duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            errors += _duplicate_keys(value, source)
    return errors


def positions(node: yaml.Node | None, path: tuple = ()) -> Positions:
    """Every key path in the document -> (line, column), 1-based; keys also under "<key>"."""
    out: Positions = {}
    if node is None:
        return out
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            out.update(positions(value, child))
            out[child + ("<key>",)] = (key.start_mark.line + 1, key.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(positions(value, path + (i,)))
    return out


# pydantic's location parts that name validators or union branches, not document keys
_SKIP_LOC = re.compile(
    r"^(function-|union\[|tagged-union|constrained-|json-or-python|dict\[|tuple\[)"
)


def format_errors(
    exc: ValidationError,
    lines: Positions,
    source: str,
    root: type[BaseModel],
    owners: Mapping[str, type[BaseModel]] = {},  # noqa: B006 (read only)
    skip: Iterable[str] = (),
) -> list[str]:
    """One ``file:line:col: field.path: message`` per error, deduplicated.

    ``owners`` maps a key to the model its mapping is validated by, for suggesting the
    nearest valid key of a typo; ``skip`` names extra location parts to leave out (a
    union's branch names).
    """
    skip = set(skip)
    messages = []
    for err in _expand(exc.errors()):
        loc = tuple(p for p in err["loc"]
                    if not (isinstance(p, str) and (_SKIP_LOC.match(p) or p in skip or p == "[key]")))  # fmt: skip
        pos = None
        for cut in range(len(loc), -1, -1):
            key = loc[:cut]
            if err["type"] == "extra_forbidden" and cut == len(loc) and key + ("<key>",) in lines:
                pos = lines[key + ("<key>",)]
                break
            if key in lines:
                pos = lines[key]
                break
        where = f"{source}:{pos[0]}:{pos[1]}" if pos else source
        dotted = ".".join(str(p) for p in loc) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = root
            for part in loc[:-1]:
                if isinstance(part, str) and part in owners:
                    model = owners[part]
            names = [f.alias or n for n, f in model.model_fields.items()]
            msg = f"unknown key {loc[-1]!r}{suggest(str(loc[-1]), names)}"
        messages.append(f"{where}: {dotted}: {msg}")
    # a union (number | mapping) reports each branch; keep one line per place and text
    return list(dict.fromkeys(messages))


def _expand(errors: list[dict]) -> list[dict]:
    out = []
    for err in errors:
        located = getattr((err.get("ctx") or {}).get("error"), "located", None)
        if located is None:
            out.append(err)
            continue
        for path, msg in located:
            out.append({**err, "loc": tuple(err["loc"]) + path, "msg": msg})
    return out
