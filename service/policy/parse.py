"""Loading a policy: YAML with positions, validation, errors as file:line:col: message."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from service.policy.model import (
    AuthorPosts,
    Category,
    Condition,
    DriftAction,
    KeywordList,
    LanguageMix,
    Marks,
    Policy,
    Profile,
    Review,
    ReviewPool,
    ReviewQueueSpec,
    Rule,
)
from service.policy.profiles import overlay_all
from service.policy.text import KeywordMatcher
from service.policy.validate import unreachable_rules
from service.yamlsource import SourceError, format_errors, read_yaml


class PolicyError(SourceError):
    """A policy that cannot be used; ``errors`` are ``file:line:col: message`` strings."""


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
    # the profile this is the policy under (None: as written), and every profile laid over
    # the policy as written (policy.profiles.overlay), keyed by name
    profile: str | None = None
    profiles: dict[str, LoadedPolicy] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.policy.name

    def under(self, raised: Collection[str]) -> LoadedPolicy:
        """The policy decisions use while the languages in ``raised`` drift (language-mix
        alerts): the profile the policy's ``on_drift`` names for them, else this one."""
        return self.profiles.get(self.policy.drift_profile(raised) or "", self)

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
    doc, lines = read_yaml(
        text, source, "a policy is a mapping (name, categories, rules, ...)", PolicyError
    )
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(format_errors(exc, lines, source, Policy, _OWNERS)) from None
    policy, includes, terms, regexes, errors = _read_includes(policy, lines, source, resolve)
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
    lp = LoadedPolicy(policy=policy, version=digest.hexdigest()[:16], source=source,
                      matchers=matchers, raw=data, includes=includes)  # fmt: skip
    overlaid = overlay_all(policy, source, lines, PolicyError)
    return replace(lp, profiles={name: replace(lp, policy=p, profile=name)
                                 for name, p in overlaid.items()})  # fmt: skip


def _read_includes(policy: Policy, lines: dict, source: str, resolve: Resolver | None):
    """Read keyword, regex and memory files; errors point into the policy or into the
    included file. Returns the policy with each memory's files read into its examples."""
    includes: dict[str, bytes] = {}
    terms: dict[str, list[str]] = {name: [] for name in policy.keywords}
    regexes: dict[str, list[str]] = {name: [] for name in policy.keywords}
    errors: list[str] = []

    def items(path: tuple, rel: str) -> list[tuple[int, str]]:
        """The file's non-blank, non-comment lines with their numbers ([] on an error)."""
        line, col = lines.get(path, (1, 1))
        where = f"{source}:{line}:{col}: {'.'.join(map(str, path))}"
        if resolve is None:
            errors.append(f"{where}: includes need a policy loaded from a file")
            return []
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            errors.append(f"{where}: {rel!r}: include paths stay beside the policy")
            return []
        try:
            content = resolve(rel)
            text = content.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{where}: cannot read {rel!r}: {getattr(exc, 'strerror', None) or exc}")
            return []
        includes[rel] = content
        stripped = ((n, raw.strip()) for n, raw in enumerate(text.splitlines(), 1))
        return [(n, item) for n, item in stripped if item and not item.startswith("#")]

    for name, kl in policy.keywords.items():
        for i, rel in enumerate(kl.files):
            terms[name] += [item for _, item in items(("keywords", name, "files", i), rel)]
        for i, rel in enumerate(kl.regex_files):
            for n, item in items(("keywords", name, "regex_files", i), rel):
                try:
                    re.compile(f"(?:{item})")
                except re.error as exc:
                    errors.append(f"{rel}:{n}:1: bad regex {item!r}: {exc}")
                    continue
                regexes[name].append(item)
    categories = dict(policy.categories)
    for name, cat in policy.categories.items():
        if cat.memory is None or not cat.memory.files:
            continue
        examples = {lang: list(texts) for lang, texts in cat.memory.examples.items()}
        unread = len(errors)
        for lang, files in cat.memory.files.items():
            for i, rel in enumerate(files):
                path = ("categories", name, "memory", "files", lang, i)
                examples.setdefault(lang, []).extend(item for _, item in items(path, rel))
        if not any(examples.values()) and len(errors) == unread:  # every file read, all empty
            line, col = lines.get(("categories", name, "memory", "files"), (1, 1))
            errors.append(f"{source}:{line}:{col}: categories.{name}.memory.files: the files "
                          "hold no example (one per line; # starts a comment)")  # fmt: skip
        memory = cat.memory.model_copy(update={"examples": examples})
        categories[name] = cat.model_copy(update={"memory": memory})
    policy = policy.model_copy(update={"categories": categories})
    return policy, includes, terms, regexes, errors


_OWNERS = {
    "rules": Rule,
    "categories": Category,
    "keywords": KeywordList,
    "when": Condition,
    "all": Condition,
    "any": Condition,
    "not": Condition,
    "author_posts": AuthorPosts,
    "review": Review,
    "pools": ReviewPool,
    "queues": ReviewQueueSpec,
    "language_mix": LanguageMix,
    "raise_at": Marks,
    "clear_at": Marks,
    "on_drift": DriftAction,
    "profiles": Profile,
}
