"""What replay's inputs are made of: the language groups and post kinds a scenario mixes and
a corpus has templates for, the ground-truth policy categories of each kind, and the error a
scenario or its corpus raises.

Kind -> ground-truth policy categories lives here, in ``KIND_CATEGORIES``, and nowhere else.
"""

from __future__ import annotations

from typing import Literal, get_args

from service.yamlsource import SourceError

Language = Literal["zh-Hans", "zh-Hant", "en", "mixed", "other"]
LANGUAGES: tuple[str, ...] = get_args(Language)

Kind = Literal[
    "everyday", "greeting", "question", "pet", "short",
    "brand_ad", "scam", "gambling_ad", "drug_ad", "hate", "harassment", "self_harm",
]  # fmt: skip
KINDS: tuple[str, ...] = get_args(Kind)

# Ground truth: the policy categories (policies/default.yaml) a human moderator would assign
# to a post of each kind. Ordinary brand and shop ads are NOT violations: they are labelled
# kind "brand_ad" with no category. The policy may still limit them (scam_spam covers
# "unsolicited advertising", and `new-account-promo` limits new accounts' promotions); a
# replay report should show those as benign posts limited, not as violations caught.
# Fake giveaways, "add my WeChat", crypto doubling and follower-selling are `scam`.
KIND_CATEGORIES: dict[str, tuple[str, ...]] = {
    "everyday": (),
    "greeting": (),
    "question": (),
    "pet": (),
    "short": (),
    "brand_ad": (),
    "scam": ("scam_spam",),
    "gambling_ad": ("gambling",),
    "drug_ad": ("drugs",),
    "hate": ("hate",),
    "harassment": ("harassment",),
    "self_harm": ("self_harm",),
}
assert set(KIND_CATEGORIES) == set(KINDS)


class ScenarioError(SourceError):
    """A scenario (or its corpus) that cannot be used; ``errors`` name file, line and field."""
