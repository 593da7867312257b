"""The seed corpus: templates with slots, per language and post kind (``seeds/corpus/*.yaml``).

One file per language (or per language of the "other" group)::

    language: en            # zh-Hans | zh-Hant | en | mixed | other
    code: en                # the text's ISO 639-1 code (other: ja, ko, es, ...)
    locales: [en-US, en-US, en-GB]   # lang_hint candidates, repeated = more likely
    slots:                  # vocabularies; values may use other slots
      food: [tacos, mac and cheese, ...]
    kinds:                  # kind -> templates
      everyday: ["made {food} for dinner {emoji}", ...]

``_common.yaml`` holds slots every file may use (emoji, hashtags, handles) and ``volatile``,
the slots a spam burst re-draws from post to post (the rest stay fixed: near-duplicates).
A slot is ``{name}`` (a random entry of its vocabulary, rendered recursively) or
``{name:LO-HI}`` (a random integer). An entry may be empty ("" = leave it out).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.replay.kinds import KINDS, Kind, Language, ScenarioError
from service.yamlsource import format_errors, read_yaml

SLOT = re.compile(r"\{([a-z][a-z0-9_]*)(?::(\d+)-(\d+))?\}")
COMMON_FILE = "_common.yaml"
MAX_DEPTH = 6


class CorpusError(ScenarioError):
    """A corpus file that cannot be used; ``errors`` are ``file:line:col: field: message``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Vocab = dict[str, list[str]]


class CommonFile(_Strict):
    slots: Vocab = {}
    volatile: list[str] = []


class LanguageFile(_Strict):
    language: Language
    code: str = Field(pattern=r"^[a-z]{2,3}$")
    locales: list[str] = Field(min_length=1)
    slots: Vocab = {}
    kinds: dict[Kind, list[str]] = Field(min_length=1)


@dataclass(frozen=True)
class Template:
    id: str  # "en.yaml:everyday:12"
    text: str
    language: str
    kind: str
    code: str
    locales: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]] = field(repr=False)

    def render(self, rng: random.Random, memo: dict | None = None,
               volatile: frozenset[str] = frozenset()) -> str:  # fmt: skip
        """Fill the slots. With ``memo``, slots other than ``volatile`` reuse earlier values."""
        counts: dict[str, int] = {}

        def fill(text: str, depth: int) -> str:
            return SLOT.sub(lambda m: one(m, depth), text)

        def one(m: re.Match, depth: int) -> str:
            name = m.group(1)
            n = counts.get(name, 0)
            counts[name] = n + 1
            key = (name, n)
            if memo is not None and name not in volatile and key in memo:
                return memo[key]
            if m.group(2) is not None:
                value = str(rng.randint(int(m.group(2)), int(m.group(3))))
            else:
                value = fill(rng.choice(self.slots[name]), depth + 1)
            if memo is not None:
                memo[key] = value
            return value

        return tidy(fill(self.text, 0))


def tidy(text: str) -> str:
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r" +([,.!?，。！？、])", r"\1", text)
    text = re.sub(r"([？！?!。～…])[。，]", r"\1", text)  # "怎么办？" + "。码住" -> "怎么办？码住"
    return text.strip()


@dataclass(frozen=True)
class Corpus:
    root: Path
    by_kind: Mapping[tuple[str, str], tuple[Template, ...]]
    volatile: frozenset[str]

    def has(self, language: str, kind: str) -> bool:
        return bool(self.by_kind.get((language, kind)))

    def pick(self, language: str, kind: str, rng: random.Random) -> Template:
        return rng.choice(self.by_kind[(language, kind)])

    def counts(self) -> dict[str, dict[str, int]]:
        """Templates per language and kind."""
        out: dict[str, dict[str, int]] = {}
        for (lang, kind), templates in sorted(self.by_kind.items()):
            out.setdefault(lang, {})[kind] = len(templates)
        return out


def load_corpus(root: Path | str) -> Corpus:
    return _load(Path(root).resolve())


@lru_cache(maxsize=8)
def _load(root: Path) -> Corpus:
    if not root.is_dir():
        raise CorpusError([f"{root}: no such corpus directory"])
    files = sorted(p for p in root.glob("*.yaml") if p.name != COMMON_FILE)
    if not files:
        raise CorpusError([f"{root}: no *.yaml corpus files"])
    common = CommonFile()
    common_lines: dict = {}
    if (root / COMMON_FILE).exists():
        common, common_lines = _parse(root / COMMON_FILE, CommonFile)  # type: ignore[assignment]
    errors: list[str] = []
    errors += _check_vocab(common.slots, {}, common_lines, root / COMMON_FILE, ("slots",))
    for name in common.volatile:
        if name not in common.slots:
            errors.append(f"{root / COMMON_FILE}: volatile: {name!r} is not a slot of this file")
    by_kind: dict[tuple[str, str], list[Template]] = {}
    for path in files:
        try:
            spec, lines = _parse(path, LanguageFile)
        except CorpusError as exc:
            errors += exc.errors
            continue
        assert isinstance(spec, LanguageFile)
        slots = {**{k: tuple(v) for k, v in common.slots.items()},
                 **{k: tuple(v) for k, v in spec.slots.items()}}  # fmt: skip
        errors += _check_vocab(spec.slots, slots, lines, path, ("slots",))
        for kind, templates in spec.kinds.items():
            for i, text in enumerate(templates):
                where = _where(path, lines, ("kinds", kind, i))
                problem = _check_text(text, slots) if text.strip() else "empty template"
                if problem:
                    errors.append(f"{where}: kinds.{kind}.{i}: {problem}")
                    continue
                by_kind.setdefault((spec.language, kind), []).append(Template(
                    id=f"{path.name}:{kind}:{i}", text=text, language=spec.language, kind=kind,
                    code=spec.code, locales=tuple(spec.locales), slots=slots))  # fmt: skip
    if errors:
        raise CorpusError(errors)
    return Corpus(root=root, by_kind={k: tuple(v) for k, v in by_kind.items()},
                  volatile=frozenset(common.volatile))  # fmt: skip


def _parse(path: Path, model: type[BaseModel]) -> tuple[BaseModel, dict]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError([f"{path}: cannot read: {exc}"]) from None
    try:
        doc, lines = read_yaml(text, str(path), "a corpus file is a mapping", CorpusError)
    except ScenarioError as exc:
        raise CorpusError(exc.errors) from None
    try:
        return model.model_validate(doc), lines
    except ValidationError as exc:
        raise CorpusError(format_errors(exc, lines, str(path), model)) from None


def _where(path: Path, lines: dict, loc: tuple) -> str:
    pos = lines.get(loc)
    return f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)


def _check_text(text: str, slots: Mapping[str, Any]) -> str | None:
    for m in SLOT.finditer(text):
        name = m.group(1)
        if m.group(2) is not None:
            if int(m.group(2)) > int(m.group(3)):
                return f"slot {m.group(0)}: range LO-HI with LO <= HI"
            continue
        if name not in slots:
            close = difflib.get_close_matches(name, list(slots), n=1)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            return f"unknown slot {{{name}}}{hint}"
    rest = SLOT.sub("", text)
    if "{" in rest or "}" in rest:
        return "stray '{' or '}' (a slot is {name} or {name:LO-HI})"
    return None


def _check_vocab(own: Vocab, slots: Mapping[str, Any], lines: dict, path: Path,
                 base: tuple) -> list[str]:  # fmt: skip
    errors = []
    known = {**slots, **own}
    for name, values in own.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            errors.append(f"{_where(path, lines, base + (name,))}: slots.{name}: "
                          "slot names are lowercase letters, digits and _")  # fmt: skip
        if not values:
            errors.append(f"{_where(path, lines, base + (name,))}: slots.{name}: empty vocabulary")
        for i, value in enumerate(values):
            problem = _check_text(value, known)
            if problem:
                errors.append(
                    f"{_where(path, lines, base + (name, i))}: slots.{name}.{i}: {problem}"
                )
    # a slot that (indirectly) contains itself would never finish rendering
    for name in own:
        if _cycle(name, known, (name,)):
            errors.append(
                f"{_where(path, lines, base + (name,))}: slots.{name}: refers to itself or nests too deep"
            )
    return errors


def _cycle(name: str, slots: Mapping[str, Any], stack: tuple[str, ...]) -> bool:
    if len(stack) > MAX_DEPTH:
        return True
    for value in slots.get(name, ()):
        for m in SLOT.finditer(value):
            child = m.group(1)
            if m.group(2) is None and (child in stack or _cycle(child, slots, stack + (child,))):
                return True
    return False


__all__ = ["KINDS", "Corpus", "CorpusError", "Template", "load_corpus"]
