"""The synthetic influx generator: scenarios, corpus and the generated stream (pure, fast).

Statistical checks use fixed seeds (so they are reproducible) and tolerances of several
standard deviations of the sampling distribution (so a correct generator passes for any
seed, and a generator that ignores a configured number fails).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import shutil
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from pathlib import Path

import pytest
import yaml

from service.language import han_script
from service.language.scripts import st_tables
from service.policy import load_policy
from service.replay import (
    DEFAULT_SCENARIO,
    KIND_CATEGORIES,
    KINDS,
    LANGUAGES,
    ScenarioError,
    generate,
    load_scenario,
    phase_at,
)
from service.replay.corpus import CorpusError, load_corpus
from service.schemas import PostIn

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "seeds" / "scenarios" / "smoke.yaml"
CORPUS = REPO / "seeds" / "corpus"
Z = 4.5  # standard deviations allowed in statistical checks


def within(observed: float, expected: float, n: int, what: str) -> None:
    sd = math.sqrt(max(expected * (1 - expected), 1e-9) / n)
    assert abs(observed - expected) <= Z * sd + 1e-9, (
        f"{what}: observed {observed:.4f}, expected {expected:.4f} (n={n}, sd={sd:.4f})"
    )


@pytest.fixture(scope="module")
def surge():
    return load_scenario()


@pytest.fixture(scope="module")
def stream(surge):
    """The default scenario at rate_scale 1: about 10,600 posts."""
    return list(generate(surge, seed=1))


def write_scenario(tmp_path: Path, doc: dict, name: str = "s.yaml") -> Path:
    doc = {"corpus": str(CORPUS), **doc}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), "utf-8")
    return path


MARKETS = {"zh-Hans": {"cn": 1.0}, "zh-Hant": {"cn": 1.0}, "en": {"intl": 0.9, "cn": 0.1},
           "mixed": {"intl": 0.8, "cn": 0.2}, "other": {"intl": 1.0}}  # fmt: skip


def one_phase(**phase) -> dict:
    base = {
        "name": "only",
        "duration": "1h",
        "rate": "4000/h",
        "languages": {"zh-Hans": 0.5, "zh-Hant": 0.1, "en": 0.3, "mixed": 0.1},
        "kinds": {"everyday": 0.5, "greeting": 0.2, "scam": 0.2, "hate": 0.1},
        "kinds_by_language": {"en": {"brand_ad": 0.5, "short": 0.3, "self_harm": 0.2}},
        "authors": {"new_share": {"en": 0.8, "default": 0.1}, "posts_per_author": 1},
    }
    base.update(phase)
    return copy.deepcopy({"name": "t", "markets": MARKETS, "phases": [base]})


# --------------------------------------------------------------------------- scenario


def test_default_scenario_has_the_reported_shape(surge):
    names = [p.name for p in surge.phases]
    assert names == ["baseline", "ramp", "peak", "decay"]
    base, ramp, peak, decay = surge.phases
    # total volume 10-20x the baseline at the peak
    assert 10 <= peak.start_rate / base.start_rate <= 20
    assert ramp.start_rate == base.start_rate and ramp.end_rate == peak.start_rate
    assert decay.start_rate == peak.end_rate and decay.end_rate < decay.start_rate
    # configured English share: about 2 % before, at least 20 % at the peak
    assert base.languages["en"] <= 0.03
    assert peak.languages["en"] >= 0.20
    # a wave of new accounts: English posts at the peak come mostly from new accounts
    assert peak.authors.new_share_for("en") >= 0.7 > base.authors.new_share_for("en")
    # brands rush in with English ads
    assert peak.kinds_for("en")["brand_ad"] > base.kinds_for("en")["brand_ad"]
    # "a day in a minute", and almost no English review capacity
    assert surge.time_scale == 1440
    assert surge.wall_seconds(86400) == pytest.approx(60)
    assert surge.review_capacity_per_hour("zh") >= 20 * surge.review_capacity_per_hour("en")
    assert surge.review_capacity_per_hour("ja") == surge.review_capacity_per_hour("other")
    assert surge.review_capacity_per_hour("zh", rate_scale=2) == pytest.approx(
        2 * surge.review_capacity_per_hour("zh"))  # fmt: skip


def test_smoke_scenario_is_short_and_small():
    smoke = load_scenario(SMOKE)
    assert 20 <= smoke.duration <= 30
    posts = list(generate(smoke, seed=3))
    assert 50 <= len(posts) <= 300
    assert {p.truth["phase"] for p in posts} == {p.name for p in smoke.phases}


def test_phase_at_boundaries(surge):
    assert phase_at(surge, 0).name == "baseline"
    assert phase_at(surge, 86399.9).name == "baseline"
    assert phase_at(surge, 86400).name == "ramp"
    assert phase_at(surge, 3 * 86400).name == "peak"
    assert phase_at(surge, surge.duration - 1).name == "decay"
    assert phase_at(surge, surge.duration + 100).name == "decay"  # spill of a last burst
    with pytest.raises(ValueError):
        phase_at(surge, -1)


def test_kind_categories_are_policy_categories():
    policy = load_policy(REPO / "policies" / "default.yaml").policy
    used = {c for cats in KIND_CATEGORIES.values() for c in cats}
    assert used <= set(policy.categories), used - set(policy.categories)
    assert set(KIND_CATEGORIES) == set(KINDS)
    assert KIND_CATEGORIES["brand_ad"] == () and KIND_CATEGORIES["scam"] == ("scam_spam",)
    harmful = {k for k, v in KIND_CATEGORIES.items() if v}
    assert harmful == {"scam", "gambling_ad", "drug_ad", "hate", "harassment", "self_harm"}


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_stream_different_seed_different_stream():
    smoke = load_scenario(SMOKE)
    a = list(generate(smoke, seed=11, rate_scale=3))
    b = list(generate(smoke, seed=11, rate_scale=3))
    c = list(generate(smoke, seed=12, rate_scale=3))
    assert a == b
    assert [p.post["text"] for p in a] != [p.post["text"] for p in c]
    assert [p.at_s for p in a] != [p.at_s for p in c]


def test_stream_is_ordered_and_inside_the_scenario(stream, surge):
    times = [p.at_s for p in stream]
    assert times == sorted(times)
    assert times[0] >= 0 and times[-1] < surge.duration
    assert len({p.post["post_id"] for p in stream}) == len(stream)


def test_start_time_shifts_created_at(surge):
    ms = timedelta(milliseconds=1)
    first = next(generate(surge, seed=5))
    at = datetime.fromisoformat(first.post["created_at"])
    assert abs(at - (surge.start + timedelta(seconds=first.at_s))) < ms
    start = datetime(2030, 6, 1, tzinfo=UTC)
    moved = next(generate(surge, seed=5, start_time=start))
    assert moved.post["text"] == first.post["text"]
    assert (
        abs(
            datetime.fromisoformat(moved.post["created_at"])
            - (start + timedelta(seconds=first.at_s))
        )
        < ms
    )


def test_rate_scale_argument_is_checked(surge):
    assert list(generate(surge, seed=1, rate_scale=0)) == []
    with pytest.raises(ValueError):
        generate(surge, seed=1, rate_scale=-1)
    with pytest.raises(ValueError):
        generate(surge, seed=1, id_prefix="bad prefix!")


# --------------------------------------------------------------------------- posts


def test_every_post_is_a_valid_postin_with_ground_truth(stream, surge):
    authors: dict[str, tuple] = {}
    for p in stream:
        PostIn.model_validate(p.post)
        t = p.truth
        assert t["language"] in LANGUAGES and t["kind"] in KINDS
        assert t["categories"] == list(KIND_CATEGORIES[t["kind"]])
        assert t["author_kind"] in ("regular", "new", "spammer", "brand")
        assert p.post["market"] in surge.markets[t["language"]]
        created = datetime.fromisoformat(p.post["created_at"])
        author_created = datetime.fromisoformat(p.post["author"]["created_at"])
        age_days = (created - author_created).total_seconds() / 86400
        assert age_days > 0
        assert t["new_account"] == (age_days < surge.new_account_days), p
        if t["author_kind"] in ("new", "spammer"):
            assert t["new_account"]
        if t["author_kind"] == "regular":
            assert not t["new_account"]
        # an author keeps its creation date and market
        key = (p.post["author"]["created_at"], p.post["market"])
        assert authors.setdefault(p.post["author"]["id"], key) == key
        if t["kind"] == "brand_ad" and t["spam_burst"] is None:
            assert t["author_kind"] == "brand"
    # authors post more than once, as configured (posts_per_author 2-3)
    assert len(authors) < 0.8 * len(stream)


def test_lang_hints_match_the_language(stream):
    hints = Counter()
    for p in stream:
        hint = p.post.get("lang_hint")
        if hint is None:
            continue
        lang = p.truth["language"]
        hints[lang] += 1
        if lang == "zh-Hans":
            assert hint.startswith("zh") and not re.search(r"TW|HK|Hant", hint)
        elif lang == "zh-Hant":
            assert re.search(r"TW|HK|Hant", hint)
        elif lang == "en":
            assert hint.startswith("en")
        elif lang == "other" and p.truth["code"] != "und":
            assert hint.split("-")[0] == p.truth["code"]
    emoji_only = [p for p in stream if not any(ch.isalpha() for ch in p.post["text"])]
    assert emoji_only and all(p.truth["code"] == "und" for p in emoji_only)
    assert sum(p.truth["code"] == "und" for p in stream) == len(emoji_only)
    with_hint = sum(hints.values()) / len(stream)
    assert 0.3 < with_hint < 0.7  # lang_hint_share 0.5, per author


# --------------------------------------------------------------------------- mixes and rates


def test_language_and_kind_mix_match_the_configuration(tmp_path):
    sc = load_scenario(write_scenario(tmp_path, one_phase()))
    phase = sc.phases[0]
    posts = list(generate(sc, seed=21))
    n = len(posts)
    assert n > 3000
    langs = Counter(p.truth["language"] for p in posts)
    for lang in LANGUAGES:
        within(langs[lang] / n, phase.languages.get(lang, 0.0), n, f"language {lang}")
    # kinds per language: English has its own mix
    for lang in ("zh-Hans", "en"):
        sub = [p for p in posts if p.truth["language"] == lang]
        kinds = Counter(p.truth["kind"] for p in sub)
        for kind in KINDS:
            within(
                kinds[kind] / len(sub),
                phase.kinds_for(lang).get(kind, 0.0),
                len(sub),
                f"{lang} {kind}",
            )
    assert not any(p.truth["kind"] == "brand_ad" for p in posts if p.truth["language"] == "zh-Hans")
    kinds = Counter(p.truth["kind"] for p in posts)
    for kind, share in phase.expected_kind_shares().items():
        within(kinds[kind] / n, share, n, f"kind {kind}")


def test_default_peak_mix_matches_the_configuration(stream, surge):
    peak = surge.phases[2]
    ordinary = [p for p in stream if p.truth["phase"] == "peak" and p.truth["spam_burst"] is None]
    n = len(ordinary)
    assert n > 3000
    langs = Counter(p.truth["language"] for p in ordinary)
    for lang, share in peak.languages.items():
        within(langs[lang] / n, share, n, f"peak language {lang}")
    kinds = Counter(p.truth["kind"] for p in ordinary)
    for kind, share in peak.expected_kind_shares().items():
        within(kinds[kind] / n, share, n, f"peak kind {kind}")
    spam = [p for p in stream if p.truth["phase"] == "peak" and p.truth["spam_burst"] is not None]
    assert spam and all(p.truth["kind"] in peak.spam.kinds for p in spam)
    assert {p.truth["language"] for p in spam} <= set(peak.spam.languages)


def expected_count(phase, rate_scale: float) -> tuple[float, float]:
    """Mean and variance of a phase's post count: Poisson ordinary posts + compound bursts."""
    total = phase.expected_posts(rate_scale)
    mean_ord = total * (1 - phase.spam_share)
    if not phase.spam:
        return mean_ord, mean_ord
    lo, hi = phase.spam.burst_size
    sizes = range(lo, hi + 1)
    ek = sum(sizes) / len(sizes)
    ek2 = sum(k * k for k in sizes) / len(sizes)
    bursts = total * phase.spam_share / ek
    return mean_ord + bursts * ek, mean_ord + bursts * ek2


@pytest.mark.parametrize("rate_scale", [0.5, 1.0, 2.0])
def test_posts_per_phase_follow_rate_times_duration(surge, rate_scale):
    counts = Counter(p.truth["phase"] for p in generate(surge, seed=31, rate_scale=rate_scale))
    for phase in surge.phases:
        mean, var = expected_count(phase, rate_scale)
        sd = math.sqrt(var)
        assert abs(counts[phase.name] - mean) <= Z * sd, (phase.name, counts[phase.name], mean, sd)
    # the numbers above really scale: 0.5x gives about half of 1x
    assert counts["peak"] == pytest.approx(5400 * rate_scale, rel=0.12)


def test_ramp_rises_linearly(surge):
    ramp = surge.phases[1]
    times = [p.at_s - ramp.start_s for p in generate(surge, seed=41, rate_scale=2)
             if p.truth["phase"] == "ramp" and p.truth["spam_burst"] is None]  # fmt: skip
    d, a, b = ramp.duration, ramp.start_rate, ramp.end_rate
    # share of the ramp's posts in its first half: integral of the linear rate
    first = (a + (a + b) / 2) / 2 * (d / 2) / ((a + b) / 2 * d)
    n = len(times)
    within(sum(t < d / 2 for t in times) / n, first, n, "ramp first half")
    assert first < 0.35  # back-loaded: the check above would fail for a constant rate


def test_english_share_grows_from_2_to_over_20_percent(surge, stream):
    baseline_end = surge.phases[0].end_s
    # the baseline is small at rate_scale 1; sample it 15x denser
    base = list(takewhile(lambda p: p.at_s < baseline_end, generate(surge, seed=51, rate_scale=15)))
    assert len(base) > 2000
    en_base = sum(p.truth["language"] == "en" for p in base) / len(base)
    assert 0.01 <= en_base <= 0.035, en_base
    peak = [p for p in stream if p.truth["phase"] == "peak"]
    en_peak = sum(p.truth["language"] == "en" for p in peak) / len(peak)
    assert en_peak >= 0.20, en_peak
    # and the peak is 10-20x the baseline's volume per second
    per_s_base = len(base) / 15 / surge.phases[0].duration
    per_s_peak = len(peak) / surge.phases[2].duration
    assert 10 <= per_s_peak / per_s_base <= 20


def test_new_account_share_per_phase(surge, stream):
    by_phase = defaultdict(list)
    for p in stream:
        by_phase[p.truth["phase"]].append(p)
    for phase in surge.phases:
        ordinary = [p for p in by_phase[phase.name] if p.truth["spam_burst"] is None]
        expected = sum(
            share * phase.authors.new_share_for(lang) for lang, share in phase.languages.items()
        )
        observed = sum(p.truth["new_account"] for p in ordinary) / len(ordinary)
        within(observed, expected, len(ordinary), f"{phase.name} new accounts")
    spam = [p for p in stream if p.truth["spam_burst"] is not None]
    assert spam and all(
        p.truth["author_kind"] == "spammer" and p.truth["new_account"] for p in spam
    )
    share = lambda name: sum(p.truth["new_account"] for p in by_phase[name]) / len(by_phase[name])  # noqa: E731
    assert share("peak") > 5 * share("baseline")


# --------------------------------------------------------------------------- text


def test_generated_text_is_varied(stream):
    posts = stream[:10_000]
    ordinary = [p.post["text"] for p in posts if p.truth["spam_burst"] is None]
    ratio = len(set(ordinary)) / len(ordinary)
    assert ratio >= 0.9, ratio
    # very short greetings ("hello", "你好") legitimately repeat; everything else barely does,
    # and not only because of random numbers
    longer = [
        p.post["text"]
        for p in posts
        if p.truth["spam_burst"] is None and p.truth["kind"] != "short"
    ]
    assert len(set(longer)) / len(longer) >= 0.95
    masked = {re.sub(r"\d+", "#", t) for t in longer}
    assert len(masked) / len(longer) >= 0.93
    # no template dominates
    templates = Counter(p.truth["template"] for p in posts)
    assert len(templates) >= 500
    assert templates.most_common(1)[0][1] / len(posts) < 0.02


def test_spam_bursts_are_near_duplicates_from_one_account(stream):
    bursts = defaultdict(list)
    for p in stream:
        if p.truth["spam_burst"] is not None:
            bursts[p.truth["spam_burst"]].append(p)
    assert len(bursts) >= 20
    ratios = []
    for posts in bursts.values():
        assert len({p.post["author"]["id"] for p in posts}) == 1
        assert len({p.truth["template"] for p in posts}) == 1
        first = posts[0].post["text"]
        ratios += [difflib.SequenceMatcher(None, first, p.post["text"]).ratio() for p in posts[1:]]
    assert sum(ratios) / len(ratios) >= 0.85
    # bursts are fast: the gaps are seconds to minutes, not hours
    spans = [posts[-1].at_s - posts[0].at_s for posts in bursts.values() if len(posts) > 1]
    assert max(spans) <= 20 * 180


def test_zh_hant_posts_are_traditional_and_zh_hans_simplified(stream):
    _, trad_only = st_tables()
    hant = [p.post["text"] for p in stream if p.truth["language"] == "zh-Hant"]
    hans = [p.post["text"] for p in stream if p.truth["language"] == "zh-Hans"]
    assert len(hant) > 200 and len(hans) > 2000
    for text in hant:
        assert any(ch in trad_only for ch in text), text
        assert han_script(text) == "Hant", text
    for text in hans:
        assert han_script(text) == "Hans", text


def test_every_zh_template_renders_in_its_script():
    import random

    corpus = load_corpus(CORPUS)
    rng = random.Random(0)
    for (lang, _kind), templates in corpus.by_kind.items():
        if lang not in ("zh-Hans", "zh-Hant"):
            continue
        for template in templates:
            for _ in range(5):
                text = template.render(rng)
                assert han_script(text) == ("Hant" if lang == "zh-Hant" else "Hans"), (
                    template.id,
                    text,
                )


def test_mixed_posts_mix_scripts_and_english_is_latin(stream):
    han = re.compile(r"[\u4e00-\u9fff]")
    mixed = [p.post["text"] for p in stream if p.truth["language"] == "mixed"]
    assert mixed and all(han.search(t) and re.search(r"[A-Za-z]", t) for t in mixed)
    english = [p.post["text"] for p in stream if p.truth["language"] == "en"]
    assert english and not any(han.search(t) for t in english)


def test_corpus_is_big_enough():
    counts = load_corpus(CORPUS).counts()
    everyday = ("everyday", "greeting", "question", "pet", "short")
    harmful = ("scam", "gambling_ad", "drug_ad", "hate", "harassment", "self_harm")
    for lang in ("zh-Hans", "zh-Hant", "en"):
        assert counts[lang]["everyday"] >= 40, lang
        assert sum(counts[lang][k] for k in everyday) >= 120, lang
        for kind in harmful + ("brand_ad",):
            assert counts[lang][kind] >= 12, (lang, kind)
    for kind in KINDS:
        assert counts["mixed"].get(kind, 0) >= 8, kind
    assert sum(counts["other"].values()) >= 80


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda d: d["phases"][0]["languages"].update({"en": 0.5}), "phases.0.languages", "sum to 1"),
        (lambda d: d["phases"][0]["kinds"].update({"scams": 0.0}), "phases.0.kinds.scams", "Input should be"),
        (lambda d: d["phases"][0].update({"duration": "6 weeks"}), "phases.0.duration", "bad duration"),
        (lambda d: d["phases"][0].update({"rat": 3}), "phases.0.rat", "did you mean 'rate'"),
        (lambda d: d["phases"][0].update({"rate": "fast"}), "phases.0.rate", "bad rate"),
        (lambda d: d["phases"][0]["authors"].update({"new_share": 1.5}), "phases.0.authors.new_share", "between 0 and 1"),
        (lambda d: d["markets"].pop("other"), "markets", "'other'"),
        (lambda d: d["phases"].append(dict(d["phases"][0])), "phases.1.name", "duplicate phase name"),
        # the corpus has no hate posts in "other" languages
        (lambda d: d["phases"][0]["languages"].update({"other": 0.1, "zh-Hans": 0.4}),
         "phases.0.kinds.hate", "no 'other' templates of kind 'hate'"),
    ],
)  # fmt: skip
def test_invalid_scenario_names_file_and_field(tmp_path, edit, field, message):
    doc = one_phase()
    edit(doc)
    path = write_scenario(tmp_path, doc, "broken.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    text = str(info.value)
    assert str(path) in text and f"{field}:" in text and message in text, text


def test_invalid_scenario_errors_have_line_numbers(tmp_path):
    text = SMOKE.read_text("utf-8").replace("    rate: 8/s\n", "    rate: 8/s\n    bursty: yes\n")
    path = tmp_path / "smoke.yaml"
    path.write_text(text.replace("corpus: ../corpus", f"corpus: {CORPUS}"), "utf-8")
    line = text.splitlines().index("    bursty: yes") + 1
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert f"{path}:{line}:5: phases.2.bursty: unknown key 'bursty'" in str(info.value)
    path.write_text("name: [unclosed\n", "utf-8")
    with pytest.raises(ScenarioError, match=re.escape(str(path)) + r":\d+:\d+: YAML syntax"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_invalid_corpus_names_file_line_and_slot(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    en = corpus / "en.yaml"
    lines = en.read_text("utf-8").splitlines()
    at = lines.index("  everyday:") + 1
    lines[at] = '    - "made {fod} today"'
    en.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(CorpusError) as info:
        load_corpus(corpus)
    assert (
        f"{en}:{at + 1}:7: kinds.everyday.0: unknown slot {{fod}} (did you mean {{food}}?)"
        in str(info.value)
    )
    # through a scenario, the error names the scenario and the corpus file
    doc = one_phase()
    path = write_scenario(tmp_path, {**doc, "corpus": str(corpus)})
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value) and str(en) in str(info.value)


def test_default_scenario_path_is_the_refugee_surge():
    assert DEFAULT_SCENARIO.name == "refugee_surge.yaml" and DEFAULT_SCENARIO.exists()
    assert list(islice(generate(load_scenario(DEFAULT_SCENARIO), seed=1), 3)) == list(
        islice(generate(load_scenario(), seed=1), 3))  # fmt: skip
