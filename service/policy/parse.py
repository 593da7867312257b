"""Loading a policy: YAML with positions, validation, errors as file:line:col: message."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from service.policy.evaluate import KeywordMatcher
from service.policy.model import Category, Condition, KeywordList, Policy, Rule, _suggest
from service.policy.validate import unreachable_rules


class PolicyError(ValueError):
    """A policy that cannot be used; ``errors`` are ``file:line:col: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


Resolver = Callable[[str], bytes]


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    # sha256 of the policy's bytes and of every file it includes, shortened
    version: str
    source: str
    matchers: dict[str, KeywordMatcher] = field(repr=False)
    raw: bytes = field(default=b"", repr=False)
    includes: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.policy.name

    def bundle(self) -> dict[str, str]:
        """Everything needed to load this exact version again (kept for every live version)."""
        return {
            "source": self.source,
            "policy": self.raw.decode("utf-8"),
            "includes": {k: v.decode("utf-8") for k, v in self.includes.items()},
        }


def policy_files(path: Path | str) -> list[Path]:
    """The policy file and the files it includes (what a watcher must watch)."""
    lp = load_policy(path)
    base = Path(path).parent
    return [Path(path)] + [base / name for name in lp.includes]


def load_policy(path: Path | str) -> LoadedPolicy:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_policy(
        raw, source=str(path), resolve=lambda name: (path.parent / name).read_bytes()
    )


def load_bundle(bundle: dict) -> LoadedPolicy:
    """Load a version from its bundle (see LoadedPolicy.bundle), without touching the disk."""
    includes = {k: v.encode("utf-8") for k, v in bundle.get("includes", {}).items()}

    def resolve(name: str) -> bytes:
        if name not in includes:
            raise FileNotFoundError(name)
        return includes[name]

    return parse_policy(bundle["policy"], source=bundle.get("source", "<bundle>"), resolve=resolve)


def parse_policy(
    raw: bytes | str, source: str = "<policy>", resolve: Resolver | None = None
) -> LoadedPolicy:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1  # in bytes
        raise PolicyError([f"{source}:{line}:{col}: not valid UTF-8 at byte {exc.start}"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise PolicyError([f"{where}: YAML syntax: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(doc, dict):
        raise PolicyError([f"{source}:1:1: a policy is a mapping (name, categories, rules, ...)"])
    duplicates = _duplicate_keys(node, source)
    if duplicates:
        raise PolicyError(duplicates)
    lines = _positions(node)
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(_format_errors(exc, lines, source)) from None
    includes, terms, regexes, errors = _read_includes(policy, lines, source, resolve)
    for path, message in unreachable_rules(policy):
        line, col = lines.get(path, (1, 1))
        errors.append(f"{source}:{line}:{col}: {'.'.join(map(str, path))}: {message}")
    if errors:
        raise PolicyError(errors)
    digest = hashlib.sha256(data)
    for name in sorted(includes):
        digest.update(b"\0" + name.encode() + b"\0" + includes[name])
    matchers = {
        name: KeywordMatcher.build(kl.terms + terms[name], kl.regexes + regexes[name])
        for name, kl in policy.keywords.items()
    }
    return LoadedPolicy(policy=policy, version=digest.hexdigest()[:16], source=source,
                        matchers=matchers, raw=data, includes=includes)  # fmt: skip


def _read_includes(policy: Policy, lines: dict, source: str, resolve: Resolver | None):
    """Read keyword and regex files; errors point into the policy or into the included file."""
    includes: dict[str, bytes] = {}
    terms: dict[str, list[str]] = {name: [] for name in policy.keywords}
    regexes: dict[str, list[str]] = {name: [] for name in policy.keywords}
    errors: list[str] = []
    for name, kl in policy.keywords.items():
        for kind, files in (("files", kl.files), ("regex_files", kl.regex_files)):
            for i, rel in enumerate(files):
                line, col = lines.get(("keywords", name, kind, i), (1, 1))
                where = f"{source}:{line}:{col}: keywords.{name}.{kind}.{i}"
                if resolve is None:
                    errors.append(f"{where}: includes need a policy loaded from a file")
                    continue
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    errors.append(f"{where}: {rel!r}: include paths stay beside the policy")
                    continue
                try:
                    content = resolve(rel)
                    text = content.decode("utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    errors.append(
                        f"{where}: cannot read {rel!r}: {getattr(exc, 'strerror', None) or exc}"
                    )
                    continue
                includes[rel] = content
                for n, raw_line in enumerate(text.splitlines(), 1):
                    item = raw_line.strip()
                    if not item or item.startswith("#"):
                        continue
                    if kind == "files":
                        terms[name].append(item)
                        continue
                    try:
                        re.compile(f"(?:{item})")
                    except re.error as exc:
                        errors.append(f"{rel}:{n}:1: bad regex {item!r}: {exc}")
                        continue
                    regexes[name].append(item)
    return includes, terms, regexes, errors


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[str]:
    """YAML lets a later key silently replace an earlier one; in a policy that hides edits."""
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


def _positions(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, tuple[int, int]]:
    """Map every key path in the YAML document to its (line, column), 1-based."""
    out: dict[tuple, tuple[int, int]] = {}
    if node is None:
        return out
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            out.update(_positions(value, child))
            out[child + ("<key>",)] = (key.start_mark.line + 1, key.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(_positions(value, path + (i,)))
    return out


def _format_errors(exc: ValidationError, lines: dict, source: str) -> list[str]:
    messages = []
    for err in _expand(exc.errors()):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic reports aliases ("not") already; find the deepest located prefix
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
            msg = f"unknown key {loc[-1]!r}{_suggest_field(loc)}"
        messages.append(f"{where}: {dotted}: {msg}")
    return messages


def _expand(errors: list[dict]) -> Iterable[dict]:
    # a validator's _LocatedErrors become one error each, at its own path
    for err in errors:
        located = getattr((err.get("ctx") or {}).get("error"), "located", None)
        if located is None:
            yield err
            continue
        for path, msg in located:
            yield {**err, "loc": tuple(err["loc"]) + path, "msg": msg}


def _suggest_field(loc: tuple) -> str:
    # nearest valid key for a typo, looked up on the model that owns the key
    owners = {
        "rules": Rule,
        "categories": Category,
        "keywords": KeywordList,
        "when": Condition,
        "all": Condition,
        "any": Condition,
        "not": Condition,
    }
    model: type[BaseModel] = Policy
    for part in loc[:-1]:
        if isinstance(part, str) and part in owners:
            model = owners[part]
    names = {f.alias or n for n, f in model.model_fields.items()}
    return _suggest(str(loc[-1]), names)
