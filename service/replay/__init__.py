"""Influx replay: a synthetic, labelled stream of posts shaped like the January 2025 influx.

``scenario`` reads a scenario YAML (phases over time: rates, language and post-kind mixes,
authors, spam bursts, reviewer capacity); ``corpus`` reads the seed templates under
``seeds/corpus``; ``generate`` turns both into a deterministic stream of ``GeneratedPost``
(scenario time, a PostIn-shaped dict, and the ground truth).
"""

from service.replay.generate import GeneratedPost, generate, phase_at
from service.replay.kinds import KIND_CATEGORIES, KINDS, LANGUAGES, ScenarioError
from service.replay.scenario import DEFAULT_SCENARIO, Phase, Scenario, load_scenario

__all__ = [
    "DEFAULT_SCENARIO",
    "KINDS",
    "KIND_CATEGORIES",
    "LANGUAGES",
    "GeneratedPost",
    "Phase",
    "Scenario",
    "ScenarioError",
    "generate",
    "load_scenario",
    "phase_at",
]
