"""Language identification for posts (pure logic: no Redis, no HTTP).

``detection`` decides (script rules first, then the statistical detectors, a market prior
and the client's hint; mixed posts split into segments): see its module doc, and
docs/language.md for the measurements behind the choices. ``scripts`` holds the Unicode
tables and the text preparation, ``backends`` the statistical detectors it consults
(fastText-lite, cld2, lingua), ``detectors`` raw backends by name for comparisons.
"""

from service.language.detection import (
    DEFAULT_PRIOR,
    HINT_WEIGHT,
    MARKET_PRIORS,
    LanguageResult,
    Segment,
    configure_priors,
    detect,
    detect_batch,
    warm_up,
)
from service.language.detectors import DETECTORS, get_detector
from service.language.scripts import HAN_WEIGHT, LATIN_CANDIDATES, char_script, han_script

__all__ = [
    "DEFAULT_PRIOR",
    "DETECTORS",
    "HAN_WEIGHT",
    "HINT_WEIGHT",
    "LATIN_CANDIDATES",
    "MARKET_PRIORS",
    "LanguageResult",
    "Segment",
    "char_script",
    "configure_priors",
    "detect",
    "detect_batch",
    "get_detector",
    "han_script",
    "warm_up",
]
