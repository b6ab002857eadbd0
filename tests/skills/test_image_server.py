"""skills/image_server over a real (small) engine: a PNG of the model's size in data[0].b64_json,
the seed honoured, and every bad request a 400 naming its field, with the server still serving."""
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skills.image_model import seeded
from skills.image_server import ROUTE, create_app
from skills.text_kv_reuse import Denoiser
from tests.skills.test_image_model import SMALL
from tests.skills.test_text_kv_reuse import Words


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Denoiser(seeded(SMALL, 7), Words()), "tiny")) as c:
        yield c


def _image(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 1
    png = base64.b64decode(data[0]["b64_json"])
    assert png.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(png)))


def test_an_image_comes_back_as_png_and_the_seed_decides_it(client):
    body = {"prompt": "a fox", "seed": 3, "num_inference_steps": 3, "guidance_scale": 5.0}
    a = _image(client.post(ROUTE, json=body))
    assert a.shape == (32, 32, 3)
    assert np.array_equal(a, _image(client.post(ROUTE, json=body)))
    assert not np.array_equal(a, _image(client.post(ROUTE, json={**body, "seed": 4})))
    assert _image(client.post(ROUTE, json={**body, "size": "32x32", "response_format": "b64_json", "model": "x"})).size


def test_a_missing_seed_is_drawn_and_returned(client):
    r = client.post(ROUTE, json={"prompt": "a fox", "num_inference_steps": 2})
    assert r.status_code == 200 and isinstance(r.json()["data"][0]["seed"], int)


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "a", "n": 2}, "n"),
    ({"prompt": "a", "response_format": "url"}, "response_format"),
    ({"prompt": "a", "size": "64x64"}, "size"),
    ({"prompt": "a", "width": 33}, "width"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": "7"}, "seed"),
    ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": True}, "num_inference_steps"),
    ({"prompt": "a", "guidance_scale": 0.5}, "guidance_scale"),
    ({"prompt": "a", "guidance_scale": "high"}, "guidance_scale"),
])
def test_bad_requests_are_a_400_naming_the_field(client, body, param):
    r = client.post(ROUTE, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"]


def test_a_body_that_is_not_json_or_not_an_object_is_a_400(client):
    assert client.post(ROUTE, content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
    assert client.post(ROUTE, json=[1, 2]).status_code == 400
    assert client.get("/health").json() == {"status": "ok"}


def test_metrics_count_images_and_refusals(client):
    before = client.get("/metrics").json()
    client.post(ROUTE, json={"prompt": "a", "num_inference_steps": 1})
    client.post(ROUTE, json={"prompt": ""})
    after = client.get("/metrics").json()
    assert after["images_total"] == before["images_total"] + 1
    assert after["image_requests_refused_total"] == before["image_requests_refused_total"] + 1
    assert after["denoise_steps_total"] > before["denoise_steps_total"]
