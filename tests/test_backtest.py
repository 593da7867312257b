"""Backtests and policy diffs on labelled posts (service/backtest/, classifier/cache.py).

The model-backed tests run the real encoder on tests/fixtures/backtest/posts.jsonl (26
hand-written posts in English and Chinese, written for this project) with an embedding
cache in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from service.backtest import (
    DataError,
    LabeledPost,
    backtest,
    category_metrics,
    diff,
    load_labeled,
    parse_label_map,
    prf,
    render_backtest,
    render_diff,
    score_posts,
)
from service.classifier.cache import EmbeddingCache
from service.config import REPO_ROOT
from service.policy import load_policy

FIXTURE = Path(__file__).parent / "fixtures" / "backtest" / "posts.jsonl"
POLICY = REPO_ROOT / "policies" / "default.yaml"
CATEGORIES = list(load_policy(POLICY).policy.categories)


# --------------------------------------------------------------------------
# Metric arithmetic (no model)


def test_prf_arithmetic():
    assert prf(3, 1, 2) == {"precision": 0.75, "recall": 0.6, "f1": 0.6667}
    # nothing predicted: precision undefined, recall and F1 are 0
    assert prf(0, 0, 4) == {"precision": None, "recall": 0.0, "f1": 0.0}
    # nothing labelled: recall undefined, every prediction is a false positive
    assert prf(0, 2, 0) == {"precision": 0.0, "recall": None, "f1": 0.0}
    assert prf(0, 0, 0) == {"precision": None, "recall": None, "f1": None}


def test_category_metrics_counts_per_language():
    rows = (
        [("hate", "en", True, True)] * 3  # tp
        + [("hate", "en", False, True)]  # fp
        + [("hate", "en", True, False)] * 2  # fn
        + [("hate", "zh", True, True), ("hate", "zh", False, False)]
        + [("hate", "ja", False, False)]  # neither labelled nor predicted: no ja row
        + [("spam", "en", False, False)]
    )
    out = {(r["category"], r["language"]): r for r in category_metrics(rows)}
    assert set(out) == {("hate", "all"), ("hate", "en"), ("hate", "zh"), ("spam", "all")}
    en = out[("hate", "en")]
    assert (en["tp"], en["fp"], en["fn"], en["tn"], en["support"], en["fired"]) == (
        3,
        1,
        2,
        0,
        5,
        4,
    )
    assert (en["precision"], en["recall"], en["f1"]) == (0.75, 0.6, 0.6667)
    every = out[("hate", "all")]
    assert (every["tp"], every["fp"], every["fn"], every["tn"], every["posts"]) == (4, 1, 2, 2, 9)
    assert out[("spam", "all")]["f1"] is None
    # a language asked for explicitly is listed even when empty
    listed = category_metrics(rows, languages=["ja"])
    assert any(r["language"] == "ja" for r in listed)


# --------------------------------------------------------------------------
# Loading (no model)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_jsonl_csv_tsv_agree(tmp_path):
    jsonl = _write(
        tmp_path / "p.jsonl",
        '{"text": "a hateful post", "labels": ["hate", "harassment"]}\n'
        "\n"
        '{"text": "hello", "labels": "none", "lang": "en", "market": "intl"}\n'
        '{"text": "buy now", "labels": "scam_spam"}\n',
    )
    csv_ = _write(
        tmp_path / "p.csv",
        "\ufeffId,Comment,Label,lang,market\n"
        '1,a hateful post,"hate, harassment",,\n'
        "2,hello,benign,en,intl\n"
        '3,"buy\nnow",scam_spam,,\n',
    )
    tsv = _write(
        tmp_path / "p.tsv",
        "post\tcategories\tlanguage\tmarket\na hateful post\thate;harassment\t\t\n"
        'hello\tNOT-HATEFUL\ten\tintl\nbuy now\t["scam_spam"]\t\t\n',
    )
    got = {}
    for path in (jsonl, csv_, tsv):
        posts = load_labeled(path, categories=CATEGORIES)
        got[path.suffix] = [
            (p.text.replace("\n", " "), p.labels, p.language, p.market) for p in posts
        ]
    assert got[".jsonl"] == [
        ("a hateful post", ("hate", "harassment"), None, None),
        ("hello", (), "en", "intl"),
        ("buy now", ("scam_spam",), None, None),
    ]
    assert got[".csv"] == got[".jsonl"] == got[".tsv"]
    # lines are file lines: the blank line counts, and a quoted newline starts on its first
    assert [p.line for p in load_labeled(jsonl)] == [1, 3, 4]
    assert [p.line for p in load_labeled(csv_)] == [2, 3, 4]
    assert load_labeled(csv_)[0].id == "1"


def test_load_yes_no_datasets(tmp_path):
    # like the UCI SMS collection: a lone quote is literal in a TSV, not a field opener
    sms = _write(
        tmp_path / "sms.tsv",
        'Label\tSMS\nham\t"Hi, see you at 5\nspam\tWIN a prize now\nham\tok "cool" bye\n',
    )
    posts = load_labeled(sms, category="scam_spam", categories=CATEGORIES)
    assert [(p.text, p.labels) for p in posts] == [
        ('"Hi, see you at 5', ()),
        ("WIN a prize now", ("scam_spam",)),
        ('ok "cool" bye', ()),
    ]
    mapped = load_labeled(sms, label_map="spam=scam_spam,ham=", categories=CATEGORIES)
    assert [p.labels for p in mapped] == [(), ("scam_spam",), ()]
    assert parse_label_map("Spam=scam_spam; ham=") == {"spam": "scam_spam", "ham": ""}
    binary = _write(tmp_path / "b.csv", "text,label\nx,1\ny,0\nz,true\nw,1.0\n")
    assert [p.labels for p in load_labeled(binary, category="hate")] == [
        ("hate",), (), ("hate",), ("hate",)
    ]  # fmt: skip
    with pytest.raises(DataError, match=r"b\.csv:2: label '1' is a yes/no label"):
        load_labeled(binary)
    three = _write(tmp_path / "c.csv", "tweet,class\nx,0\ny,2\n")
    with pytest.raises(DataError, match=r"c\.csv:3: label '2' is not binary"):
        load_labeled(three, category="hate")
    assert [p.labels for p in load_labeled(three, label_map="0=hate,2=")] == [("hate",), ()]


def test_load_errors_name_file_and_line(tmp_path):
    bad_json = _write(tmp_path / "bad.jsonl", '{"text": "a", "labels": []}\n\n{"text": "b",\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_labeled(bad_json)
    short = _write(tmp_path / "short.csv", "text,labels\na,hate\nb\nc,none\n")
    with pytest.raises(DataError, match=r"short\.csv:3: 1 fields, the header has 2"):
        load_labeled(short)
    no_text = _write(tmp_path / "nt.csv", "body_text,labels\na,hate\n")
    with pytest.raises(DataError, match=r"nt\.csv:1: no text column .*columns: body_text, labels"):
        load_labeled(no_text)
    assert load_labeled(no_text, text_col="BODY_TEXT")[0].text == "a"
    with pytest.raises(DataError, match=r"nt\.csv:1: no column 'nope'"):
        load_labeled(no_text, text_col="body_text", label_col="nope")
    empty = _write(
        tmp_path / "e.jsonl", '{"text": "ok", "labels": []}\n{"text": "  ", "labels": []}\n'
    )
    with pytest.raises(DataError, match=r"e\.jsonl:2: empty or missing text"):
        load_labeled(empty)
    unknown = _write(
        tmp_path / "u.jsonl", '{"text": "a", "labels": "hate"}\n{"text": "b", "labels": "haet"}\n'
    )
    with pytest.raises(DataError, match=r"u\.jsonl:2: unknown label 'haet'"):
        load_labeled(unknown, categories=CATEGORIES)
    skipping = load_labeled(unknown, categories=CATEGORIES, skip_bad=True)
    assert [p.text for p in skipping] == ["a"]
    assert len(skipping.skipped) == 1 and "u.jsonl:2:" in skipping.skipped[0]
    latin1 = tmp_path / "l.csv"
    latin1.write_bytes("text,labels\nok,none\ncaf\xe9,none\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l\.csv:3: not valid UTF-8"):
        load_labeled(latin1)


def test_load_limit_is_a_seeded_sample_in_file_order(tmp_path):
    rows = "".join(json.dumps({"text": f"post {i}", "labels": []}) + "\n" for i in range(50))
    path = _write(tmp_path / "many.jsonl", rows)
    a = [p.line for p in load_labeled(path, limit=10, seed=1)]
    assert a == [p.line for p in load_labeled(path, limit=10, seed=1)]
    assert a == sorted(a) and len(set(a)) == 10
    assert a != [p.line for p in load_labeled(path, limit=10, seed=2)]
    assert len(load_labeled(path, limit=500)) == 50


# --------------------------------------------------------------------------
# With the real model


def _variant(tmp_path: Path, name: str, edit=None) -> Path:
    """A modified copy of the default policy, beside copies of the files it includes."""
    folder = tmp_path / "policies"
    if not folder.exists():
        shutil.copytree(POLICY.parent, folder)
    doc = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    if edit is not None:
        edit(doc)
    path = folder / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embcache")


@pytest.fixture(scope="module")
def cold(cache_dir, model_dir):
    """The first backtest on an empty cache, with every post's details."""
    cache = EmbeddingCache(cache_dir, model_dir)
    result = backtest(POLICY, FIXTURE, cache=cache, include_posts=True, progress=False)
    return cache, result


def test_backtest_metrics_match_a_recount(cold):
    _, result = cold
    posts = result["posts"]
    assert len(posts) == 26
    assert Counter(p["language"] for p in posts) == {"en": 15, "zh": 11}
    lp = load_policy(POLICY)
    rows = {(r["category"], r["language"]): r for r in result["categories"]}
    for cat in CATEGORIES:
        for lang in ("all", "en", "zh"):
            sel = [p for p in posts if lang in ("all", p["language"])]
            category = lp.policy.categories[cat]
            fired = [p["scores"][cat] >= category.threshold_for(p["language"]) for p in sel]
            truth = [cat in p["labels"] for p in sel]
            tp = sum(f and t for f, t in zip(fired, truth, strict=True))
            fp = sum(f and not t for f, t in zip(fired, truth, strict=True))
            fn = sum(t and not f for f, t in zip(fired, truth, strict=True))
            row = rows.get((cat, lang))
            if row is None:
                assert lang != "all" and tp == fp == fn == 0
                continue
            assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn), (cat, lang)
            assert (row["precision"], row["recall"], row["f1"]) == tuple(prf(tp, fp, fn).values())
    # hand-counted from the fixture: 6 hate posts (4 en, 2 zh), 16 labelled, 10 benign
    assert (rows[("hate", "all")]["support"], rows[("hate", "en")]["support"]) == (6, 4)
    assert result["data"]["benign"] == 10
    assert result["data"]["labels"] == {
        "hate": 6, "scam_spam": 4, "harassment": 2, "self_harm": 2, "gambling": 2, "drugs": 1,
    }  # fmt: skip
    # actions: own market is cn except the two intl posts
    own = Counter(p["actions"][p["market"]] for p in posts)
    assert result["actions"]["all"] == {a: n for a, n in own.items()}
    assert sum(p["market"] == "intl" for p in posts) == 2


def test_backtest_rules_and_caught(cold):
    _, result = cold
    posts = result["posts"]
    rules = {r["rule"]: r for r in result["rules"]}
    # keyword rule, no model involved: exactly the three posts with casino / 冰毒 vocabulary
    kw = rules["gambling-drug-terms"]
    assert kw["matched"] == 3 and kw["precision"] is None and kw["categories"] == []
    assert {e["text"][:10] for e in kw["examples"]} == {
        "Best onlin", "出售冰毒和K粉，货源", "Those fore",
    }  # fmt: skip
    # the cn-only rule: every English post in cn (13 of 15: two are posted in intl)
    feed = rules["english-in-cn-feed"]
    assert feed["matched"] == 13 and feed["matched_by_market"] == {"cn": 15, "intl": 0}
    assert rules["harmful-zh-review"]["categories"] == [
        "hate", "harassment", "sexual", "violence", "drugs", "gambling", "scam_spam",
    ]  # fmt: skip
    for rule in result["rules"]:
        matched = [p for p in posts if rule["rule"] in p["rules"][p["market"]]]
        assert rule["matched"] == len(matched)
        if rule["categories"]:
            good = sum(bool(set(rule["categories"]) & set(p["labels"])) for p in matched)
            assert rule["labelled_matches"] == good
    caught = {(r["category"], r["language"]): r for r in result["caught"]}
    hate = [p for p in posts if "hate" in p["labels"]]
    assert caught[("hate", "all")]["positives"] == len(hate) == 6
    assert caught[("hate", "all")]["caught"] == sum(
        p["actions"][p["market"]] != "allow" for p in hate
    )
    assert caught[("hate", "all")]["caught_by_market"]["intl"] == sum(
        p["actions"]["intl"] != "allow" for p in hate
    )
    # the default policy has a rule on hate at its threshold for every language (zh-review,
    # other-limit): the hate posts caught by a hate rule are exactly those where hate fired
    hate_tp = next(
        r["tp"] for r in result["categories"] if r["category"] == "hate" and r["language"] == "all"
    )
    assert caught[("hate", "all")]["caught_by_category_rule"] == hate_tp
    benign = {r["language"]: r for r in result["benign_actioned"]}
    # benign English posts in cn get the foreign-language label: 4 of the 6 (2 are intl)
    assert benign["en"]["benign"] == 6 and benign["en"]["actioned"] == 4
    json.dumps(result)  # JSON-able


def test_category_threshold_zero_fires_everywhere(tmp_path, cold, cache_dir, model_dir):
    def edit(doc):
        doc["categories"]["harassment"].update(threshold=0.0, thresholds={})

    path = _variant(tmp_path, "zero.yaml", edit)
    result = backtest(path, FIXTURE, cache=EmbeddingCache(cache_dir, model_dir), progress=False)
    row = next(
        r for r in result["categories"] if r["category"] == "harassment" and r["language"] == "all"
    )
    assert (row["fired"], row["tp"], row["fp"], row["fn"]) == (26, 2, 24, 0)
    assert (row["precision"], row["recall"], row["f1"]) == (round(2 / 26, 4), 1.0, round(4 / 28, 4))


def test_second_run_is_served_from_the_cache(cold, cache_dir, model_dir):
    first_cache, first = cold
    # the posts, plus the zero-shot anchors of any category without a trained head
    assert first["cache"]["embedding_computed"] >= 26
    assert first["cache"]["language_computed"] == 26
    cache = EmbeddingCache(cache_dir, model_dir)
    again = backtest(POLICY, FIXTURE, cache=cache, include_posts=True, progress=False)
    assert cache.computed == 0 and cache.encoder_calls == 0
    assert cache.language_computed == 0 and cache.language_hits == 26
    assert not cache.encoder_loaded  # the model was never even loaded
    assert again["categories"] == first["categories"]
    assert [p["scores"] for p in again["posts"]] == [p["scores"] for p in first["posts"]]
    # one new text: exactly one embedding computed, with the same model as the rest
    posts = load_labeled(FIXTURE)
    extra = [*posts, LabeledPost(text="A brand new post about dumplings.", labels=())]
    scored = score_posts(extra, POLICY, cache, progress=False)
    assert cache.computed == 1 and cache.encoder_calls == 1 and cache.language_computed == 1
    assert scored[0].scores == first["posts"][0]["scores"]


def test_diff_of_a_policy_with_itself_is_empty(cold, cache_dir, model_dir, tmp_path):
    # the same policy re-serialised: another file and version, the same decisions
    copy = _variant(tmp_path, "same.yaml")
    result = diff(POLICY, copy, FIXTURE, cache=EmbeddingCache(cache_dir, model_dir), progress=False)
    assert result["old"]["version"] != result["new"]["version"]
    assert result["changed_posts"] == 0 and result["changed"] == [] and result["by_rule"] == []
    assert result["scores_reused"] is True


def test_diff_reports_exactly_the_changed_posts(cold, cache_dir, model_dir, tmp_path):
    _, base = cold
    posts = base["posts"]

    def edit(doc):
        rule = next(r for r in doc["rules"] if r["id"] == "english-in-cn-feed")
        rule["action"] = "limit_reach"

    new = _variant(tmp_path, "stricter-feed.yaml", edit)
    cache = EmbeddingCache(cache_dir, model_dir)
    result = diff(POLICY, new, FIXTURE, cache=cache, progress=False)
    # exactly the posts whose cn action was decided by the label rule
    expected = [i for i, p in enumerate(posts) if p["actions"]["cn"] == "label"]
    assert expected, "the fixture must have English posts labelled in cn"
    assert [c["index"] for c in result["changed"]] == expected
    assert result["changed_posts"] == len(expected)
    assert [(g["market"], g["old"], g["new"], g["language"], g["count"]) for g in result["by_transition"]] == [
        ("cn", "label", "limit_reach", "en", len(expected))
    ]  # fmt: skip
    assert result["by_rule"] == [] and result["rules_only_changed"] == 0  # same rules matched
    assert all(set(c["markets"]) == {"cn"} for c in result["changed"])
    assert result["scores_reused"] is True
    assert cache.computed == 0  # all embeddings came from the cache


def test_diff_threshold_change_groups_by_rule(cold, cache_dir, model_dir, tmp_path):
    _, base = cold
    posts = base["posts"]

    def edit(doc):
        doc["categories"]["harassment"]["thresholds"] = {"en": 0.0}  # every English post fires

    new = _variant(tmp_path, "harassment-en.yaml", edit)
    result = diff(POLICY, new, FIXTURE, cache=EmbeddingCache(cache_dir, model_dir), progress=False)
    limit = 3  # severity of review: harmful-other-review now matches every English post
    rank = {"allow": 0, "label": 1, "limit_reach": 2, "review": 3, "remove": 4}
    expected = [
        i for i, p in enumerate(posts)
        if p["language"] == "en" and any(rank[a] < limit for a in p["actions"].values())
    ]  # fmt: skip
    assert expected and [c["index"] for c in result["changed"]] == expected
    for c in result["changed"]:
        for m in c["markets"].values():
            assert m["new"] == "review" and rank[m["old"]] < limit
            assert "harmful-other-review" in m["new_rules"]
    appeared = [
        i for i, p in enumerate(posts)
        if p["language"] == "en" and "harmful-other-review" not in p["rules"]["cn"]
    ]  # fmt: skip
    groups = {(g["rule"], g["change"], g["language"]): g for g in result["by_rule"]}
    assert set(groups) == {("harmful-other-review", "appeared", "en")}
    g = groups[("harmful-other-review", "appeared", "en")]
    assert g["count"] == len(appeared) and g["action_changed"] == len(expected)
    assert result["rules_only_changed"] == len(appeared) - len(expected)


def test_render_tables(cold, cache_dir, model_dir, tmp_path):
    _, result = cold
    console = Console(record=True, width=200)
    render_backtest(result, console)
    text = console.export_text()
    assert "category fired" in text and "english-in-cn-feed" in text and "scam_spam" in text

    def edit(doc):
        doc["categories"]["hate"]["threshold"] = 0.6
        doc["categories"]["harassment"]["thresholds"] = {"en": 0.0}

    new = _variant(tmp_path, "changed.yaml", edit)
    d = diff(POLICY, new, FIXTURE, cache=EmbeddingCache(cache_dir, model_dir), progress=False)
    json.dumps(d)
    assert d["changed_posts"] > 0
    console = Console(record=True, width=1000)
    render_diff(d, console)
    text = console.export_text()
    assert f"{d['changed_posts']} of 26 posts change action" in text
    for g in d["by_transition"]:
        assert f"{g['old']} → {g['new']}" in text
