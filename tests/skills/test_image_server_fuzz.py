"""Property-based fuzzing of the image server layer that engine-f, engine-g and the torch reference
share (skills/image_server), over a real small engine: whatever a client posts, the answer is a PNG
or a 4xx with a message, never a 5xx; after each case the server still draws a correct request."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skills.image_model import seeded
from skills.image_server import ROUTE, create_app
from skills.text_kv_reuse import Denoiser
from tests.skills.test_image_model import SMALL
from tests.skills.test_text_kv_reuse import Words

FIELDS = ["prompt", "seed", "num_inference_steps", "guidance_scale", "size", "width", "height", "n",
          "response_format", "model", "user", "quality", "style", "negative_prompt"]
VALID = {"prompt": "a red fox in the snow", "seed": 1, "num_inference_steps": 2}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.integers(-3, 4)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["32x32", "64x64", "0x0", "b64_json", "url", "", "\x00", "\ud800"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
DEEP = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Denoiser(seeded(SMALL, 7), Words()), "tiny"), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    response = client.post(ROUTE, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.json()["error"]["message"], response.text
    else:
        assert response.json()["data"][0]["b64_json"], response.text[:200]


def still_serves(client: TestClient) -> None:
    response = client.post(ROUTE, json=VALID)
    assert response.status_code == 200 and response.json()["data"][0]["seed"] == 1, response.text[:500]


@pytest.mark.timeout(600)
@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=4))
def test_a_valid_request_with_fields_replaced_by_any_json_is_answered_without_a_5xx(client, changes):
    post(client, {**VALID, **changes})
    still_serves(client)


@pytest.mark.timeout(600)
@SETTINGS
@given(body=st.dictionaries(st.sampled_from(FIELDS), values, max_size=5) | values | st.binary(max_size=64))
def test_any_body_is_answered_without_a_5xx(client, body):
    post(client, body)
    still_serves(client)


@pytest.mark.parametrize("body", [
    DEEP,
    {**VALID, "seed": 2**63 - 1, "num_inference_steps": 1, "guidance_scale": 50},
    {**VALID, "prompt": "x" * 4000, "num_inference_steps": 1},
    {**VALID, "prompt": "\ud800 \x00 \u202e"},
    {**VALID, "guidance_scale": 1},
    {**VALID, "guidance_scale": "\ud800"},  # quoted back in the 400's message (hypothesis found its 500)
    {**VALID, "num_inference_steps": None, "guidance_scale": None, "n": None, "response_format": None, "size": None},
], ids=["nested-past-the-recursion-limit", "largest-seed-and-guidance", "longest-prompt", "odd-characters",
        "guidance-1-no-uncond",
        "lone-surrogate-quoted-in-the-error", "nulls-read-as-defaults"])
def test_edge_requests_are_answered_without_a_5xx(client, body):
    post(client, body)
    still_serves(client)
