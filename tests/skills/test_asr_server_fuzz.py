"""Property-based fuzzing of the speech server layer (skills/asr_server, which engine-d serves):
whatever frames a WebSocket client sends, every message back is a partial, a final or an error
with a message, the stream ends closed as done or as a protocol error (never an internal one);
whatever file a client uploads for transcription, the answer is a 2xx or a 4xx with a message.
After each case the server still serves a correct request."""
from __future__ import annotations

import io
import json
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_asr_server import FakeTranscriber

from skills.asr_server import create_app
from skills.asr_server.protocol import CLOSE_DONE, CLOSE_PROTOCOL, ROUTE

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FINALIZE = '{"type": "finalize"}'


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(FakeTranscriber(), "fake-asr"), raise_server_exceptions=False) as c:
        yield c


def wav(samples: int = 1600, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.arange(samples * channels * width, dtype=np.uint8).tobytes())
    return out.getvalue()


def converse(client: TestClient, frames: list) -> tuple[list[dict], int]:
    """Send every frame, then a finalize; read until the server closes: (messages, close code)."""
    messages = []
    with client.websocket_connect(ROUTE) as ws:
        for frame in [*frames, FINALIZE]:
            ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame)
        try:
            while True:
                messages.append(ws.receive_json())
        except WebSocketDisconnect as closed:
            return messages, closed.code


def still_serves(client: TestClient) -> None:
    messages, code = converse(client, [np.ones(320, "<i2").tobytes()])
    assert code == CLOSE_DONE and [m["type"] for m in messages] == ["partial", "final"], messages
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(), "audio/wav")})
    assert response.status_code == 200 and response.json()["text"], response.text


frames = st.lists(st.binary(max_size=40) | st.text(max_size=24) | st.just(FINALIZE)
                  | st.dictionaries(st.sampled_from(["type", "x"]), st.sampled_from(["finalize", "partial", 1, None]),
                                    max_size=2).map(json.dumps), max_size=6)


@pytest.mark.timeout(300)
@SETTINGS
@given(sent=frames)
def test_any_frames_get_protocol_messages_and_a_clean_close(client, sent):
    messages, code = converse(client, sent)
    assert code in (CLOSE_DONE, CLOSE_PROTOCOL), (sent, messages, code)
    assert all(m.get("type") in ("partial", "final", "error") for m in messages), messages
    assert all(m["message"] for m in messages if m["type"] == "error")
    assert [m["type"] for m in messages].count("final") + [m["type"] for m in messages].count("error") == 1, messages
    still_serves(client)


@pytest.mark.timeout(300)
@SETTINGS
@given(data=st.binary(max_size=96)
       | st.tuples(st.lists(st.tuples(st.integers(0, 47), st.binary(min_size=1, max_size=4)), max_size=4),
                   st.integers(0, 200)).map(lambda edit: _edited(*edit))
       | st.builds(wav, st.integers(0, 400), st.sampled_from([1, 8000, 16000, 44100]), st.integers(1, 3),
                   st.integers(1, 4)))
def test_any_upload_is_answered_without_a_5xx(client, data):
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")})
    assert response.status_code < 500, (data[:64], response.status_code, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
    still_serves(client)


def _edited(edits: list[tuple[int, bytes]], cut: int) -> bytes:
    data = bytearray(wav())
    for at, new in edits:
        data[at:at + len(new)] = new
    return bytes(data[: len(data) - cut])


def test_an_upload_without_a_file_field_is_a_400(client):
    response = client.post("/v1/audio/transcriptions", data={"file": "not a file"})
    assert response.status_code == 400 and "WAV file is required" in response.json()["error"]["message"]


@pytest.mark.timeout(60)  # without the fix the server's handler died and the client waited for ever
def test_a_text_frame_nested_past_the_decoders_recursion_limit_is_a_protocol_error(client):
    messages, code = converse(client, ["[" * 100_000])
    assert code == CLOSE_PROTOCOL and messages[-1]["type"] == "error" and messages[-1]["message"], messages
    still_serves(client)
