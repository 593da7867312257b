"""policy.text.model_view: the classifier's view of a post folds what evaders change and
keeps what carries meaning (case, punctuation, a lone emoji standing for a word)."""

from __future__ import annotations

import pytest

from service.policy.text import model_view


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("加😀微😀信领取", "加微信领取"),  # the same emoji between characters: an evasion
        ("日*结*兼*职", "日结兼职"),
        ("加 微 信", "加微信"),
        ("c a s i n o tonight", "casino tonight"),
        ("ＳＨＵＴ ＵＰ 你這個廢物", "SHUT UP 你这个废物"),  # full-width, Traditional; case kept
        ("滚吧🐶东西", "滚吧🐶东西"),  # one emoji may stand for a word
        ("今天天气很好。我们去公园吧", "今天天气很好。我们去公园吧"),  # punctuation stays
        ("hello\u200bworld", "helloworld"),  # invisible characters go
        ("Hello world, this is fine.", "Hello world, this is fine."),
    ],
)
def test_model_view(text: str, view: str):
    assert model_view(text) == view


def test_model_view_is_idempotent():
    for text in ("加😀微😀信", "c a s i n o", "ＳＨＵＴ 你這個", "我 爱 你 ❤️ 宝贝"):
        assert model_view(model_view(text)) == model_view(text)


def test_the_served_encoder_reads_the_view(model_dir, tmp_path):
    """The worker's encoder and the offline cache (backtest, training) embed an evaded post
    as its folded form, and the cache finds one under the other's key."""
    import numpy as np

    from service.classifier.loader import load_encoder, open_embedding_cache
    from service.config import Settings

    settings = Settings(model_dir=model_dir, data_dir=tmp_path)
    encoder = load_encoder(settings)
    evaded, plain = "加😀微😀信領取福利", "加微信领取福利"
    a, b = encoder.embed([evaded, plain], prefix="query: ")
    assert np.allclose(a, b, atol=1e-6)
    raw = load_encoder(settings.model_copy(update={"input_view": False}))
    c, d = raw.embed([evaded, plain], prefix="query: ")
    assert not np.allclose(c, d, atol=1e-3)  # as written, the two differ
    cache = open_embedding_cache(settings)
    cache.embed([plain])
    before = cache.computed
    assert np.allclose(cache.embed([evaded])[0], b, atol=1e-5)
    assert cache.computed == before  # found under the view's key: nothing embedded again
