"""The post's market reaches language detection in the one decide path, and the priors come
from Settings (FLOODGATE_LANGUAGE_MARKET_PRIORS / _DEFAULT_PRIOR)."""

from __future__ import annotations

import copy

import pytest

from service import language
from service.config import Settings
from service.pipeline import Job, configure_language
from service.schemas import PostIn


@pytest.fixture
def restore_priors():
    saved = copy.deepcopy((language.MARKET_PRIORS, language.DEFAULT_PRIOR))
    yield
    language.configure_priors(*saved)


def test_settings_configure_the_priors(restore_priors, model_dir):
    configure_language(Settings(model_dir=model_dir, language_market_priors={"ES-Test": {"ES": 6}},
                                language_default_prior={"en": 2.5}))  # fmt: skip
    assert language.MARKET_PRIORS == {"es-test": {"es": 6.0}}
    assert language.DEFAULT_PRIOR == {"en": 2.5}
    with pytest.raises(ValueError):
        configure_language(Settings(model_dir=model_dir, language_default_prior={"en": 0}))


def test_the_market_breaks_a_tie_in_the_workers_decide_path(restore_priors, moderator):
    language.configure_priors(markets={"es-test": {"es": 6.0}})
    plain, spanish = moderator.decide([
        Job("tie-1", PostIn(text="capital")),
        Job("tie-2", PostIn(text="capital", market="es-test")),
    ])  # fmt: skip
    assert plain.language.code == "en"
    assert spanish.language.code == "es"
