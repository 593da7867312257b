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
