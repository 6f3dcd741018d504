"""Payload encryption (AES-256-GCM with a key id) and the codec server coordinators use
to read payloads in the Temporal UI, behind a bearer token."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.testing import WorkflowEnvironment

from tests.workflows.conftest import Harness
from workflows.codec import ENCODING, EncryptionCodec, PayloadKeyError, create_key, load_keyring
from workflows.codec_server import create_app, resolve_token
from workflows.settings import CodecServerSettings

TOKEN = "coordinator-token-0123456789abcdef"


def codec_in(tmp_path: Path, key_id: str = "k1") -> EncryptionCodec:
    return EncryptionCodec(load_keyring(tmp_path, key_id, autocreate=True))


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_round_trip_and_no_clear_text(tmp_path: Path) -> None:
    codec = codec_in(tmp_path)
    [sealed] = await codec.encode([plain('{"diagnosis":"carcinoma"}')])
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata["encryption-key-id"] == b"k1"
    assert b"carcinoma" not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == plain('{"diagnosis":"carcinoma"}')
    # A fresh nonce each time.
    [again] = await codec.encode([plain('{"diagnosis":"carcinoma"}')])
    assert again.data != sealed.data


async def test_tampering_relabelling_and_unknown_keys_fail(tmp_path: Path) -> None:
    codec = codec_in(tmp_path)
    [sealed] = await codec.encode([plain("x")])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(InvalidTag):
        await codec.decode([tampered])
    create_key(tmp_path, "k2")
    rotated = codec_in(tmp_path, "k2")  # rotation: new active key, the old one still decrypts
    assert await rotated.decode([sealed]) == [plain("x")]
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata["encryption-key-id"] = b"k2"
    with pytest.raises(InvalidTag):
        await rotated.decode([relabelled])
    other = codec_in(tmp_path / "elsewhere", "k9")
    with pytest.raises(PayloadKeyError):
        await other.decode([sealed])


async def test_missing_key_without_autocreate_stops(tmp_path: Path) -> None:
    with pytest.raises(PayloadKeyError):
        load_keyring(tmp_path, "absent", autocreate=False)


async def test_clear_payloads_from_before_the_codec_still_decode(tmp_path: Path) -> None:
    assert await codec_in(tmp_path).decode([plain("old")]) == [plain("old")]


@pytest.mark.temporal
async def test_history_holds_no_clear_payload(harness: Harness, ts_env: WorkflowEnvironment) -> None:
    case_id = str(uuid.uuid4())
    handle = await harness.start(case_id=case_id)
    await harness.until(handle, lambda v: v.phase.value == "payment")
    history = await handle.fetch_history()
    payloads: list[Payload] = []
    for event in history.events:
        payloads += event.workflow_execution_started_event_attributes.input.payloads
        payloads += event.activity_task_scheduled_event_attributes.input.payloads
        payloads += event.activity_task_completed_event_attributes.result.payloads
    assert len(payloads) > 8
    # Every input and result is sealed; no identifier readable even base64-decoded.
    assert {p.metadata["encoding"] for p in payloads} == {ENCODING}
    blob = b"".join(p.data for p in payloads)
    for secret in (b"acct-patient", b"order-1", case_id.encode()):
        assert secret not in blob
    await handle.terminate("test over")


def app_client(tmp_path: Path, codec: EncryptionCodec) -> httpx.AsyncClient:
    settings = CodecServerSettings(bearer_token=TOKEN, namespaces=["default"])
    app = create_app(settings, codec, resolve_token(settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


async def test_codec_server_decodes_for_an_authenticated_coordinator(tmp_path: Path) -> None:
    codec = codec_in(tmp_path)
    sealed = await codec.encode([plain('{"case":"x"}')])
    body = json_format.MessageToJson(Payloads(payloads=sealed))
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    async with app_client(tmp_path, codec) as http:
        refused = await http.post("/decode", content=body, headers=headers)
        assert refused.status_code == 401 and "case" not in refused.text
        wrong = await http.post("/decode", content=body, headers={**headers, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.post("/decode", content=body, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        decoded = json_format.Parse(ok.content, Payloads())
        assert list(decoded.payloads) == [plain('{"case":"x"}')]
        by_path = await http.post(f"/{TOKEN}/decode", content=body, headers=headers)
        assert by_path.status_code == 200
        foreign = await http.post(
            "/decode",
            content=body,
            headers={**headers, "X-Namespace": "other", "Authorization": f"Bearer {TOKEN}"},
        )
        assert foreign.status_code == 403
        encoded = await http.post(
            "/encode",
            content=json_format.MessageToJson(Payloads(payloads=[plain("y")])),
            headers={**headers, "Authorization": f"Bearer {TOKEN}"},
        )
        assert json_format.Parse(encoded.content, Payloads()).payloads[0].metadata["encoding"] == ENCODING


async def test_codec_server_cors_admits_the_ui_origin_only(tmp_path: Path) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,x-namespace",
    }
    async with app_client(tmp_path, codec_in(tmp_path)) as http:
        ui = await http.options("/decode", headers={**preflight, "Origin": "http://127.0.0.1:8233"})
        assert ui.status_code == 200
        assert ui.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
        evil = await http.options("/decode", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


async def test_token_file_is_created_private(tmp_path: Path) -> None:
    settings = CodecServerSettings(token_file=tmp_path / "codec.token")
    token = resolve_token(settings)
    assert len(token) >= 32 and resolve_token(settings) == token
    assert (tmp_path / "codec.token").stat().st_mode & 0o777 == 0o600
