"""`POST /v1/moderations` through the official `openai` client pointed at Floodgate.

Real client package, real HTTP, the real app and model; a key with the submit role.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from service.api.routes.moderations import OPENAI_CATEGORIES
from service.auth import KeyStore
from service.queue import Keys
from service.redisdb import connect


@pytest.fixture
def client(service, settings):
    key = KeyStore(connect(settings.redis_url), Keys(settings.key_prefix)).create("gateway", ["submit"])
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key=key.token, max_retries=0) as c:
        yield c


def test_the_openai_client_round_trips_a_batch(client, settings):
    texts = ["I will kill you and your whole family", "my cat knocked over my coffee again",
             "今天做了红烧肉，味道还不错"]  # fmt: skip
    out = client.moderations.create(input=texts, model="omni-moderation-latest")
    assert out.id.startswith("modr-") and out.model.startswith("floodgate-")
    assert len(out.results) == 3
    threat, cat, food = out.results
    assert threat.flagged and threat.categories.violence
    assert threat.category_scores.violence > cat.category_scores.violence
    assert not cat.flagged and not food.flagged
    # every OpenAI category is present, in its own spelling
    dumped = threat.model_dump(by_alias=True)
    assert set(dumped["categories"]) >= set(OPENAI_CATEGORIES)
    assert dumped["categories"]["sexual/minors"] is False  # not detected: never claimed
    extra = threat.model_extra["floodgate"]
    assert extra["action"] in {"remove", "review", "limit_reach"} and extra["language"]["code"] == "en"
    assert food.model_extra["floodgate"]["language"]["code"] == "zh"


def test_a_single_string_and_the_errors(client, service):
    one = client.moderations.create(input="hello from Texas")
    assert len(one.results) == 1 and not one.results[0].flagged
    with pytest.raises(openai.UnprocessableEntityError):
        client.moderations.create(input="   ")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="fg_wrong", max_retries=0).moderations.create(input="hi")
    r = httpx.post(f"{service.url}/v1/moderations", json={"input": ["ok", ""]},
                   headers={"Authorization": f"Bearer {client.api_key}"})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["field"].startswith("input")
