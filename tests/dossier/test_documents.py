"""Documents through the service on both object stores (local folder, S3 via minio against
moto) and both databases: streamed upload, type by content, active PDFs refused, DICOM
parsed, ClamAV with quarantine, per-object encryption, verified download, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc

from services.dossier.domain.crypto import Keyring, create_master_key
from services.dossier.domain.scan import ClamdScanner
from services.shared.auth import Role
from tests.dossier import samples
from tests.dossier.conftest import COORDINATOR, EICAR, MAX_BYTES, Dossier, assign, create_case, expect_status

IA = grpc.StatusCode.INVALID_ARGUMENT
CHUNK = 64 * 1024


def upload_messages(
    data: bytes,
    case_id: str,
    key: str,
    *,
    name: str = "scan.pdf",
    declared: int | None = None,
    purpose: Any = pb.DOCUMENT_PURPOSE_MEDICAL_RECORD,
    chunk: int = CHUNK,
    **meta: Any,
) -> Iterator[pb.UploadDocumentRequest]:
    yield pb.UploadDocumentRequest(
        idempotency_key=key,
        metadata=pb.UploadDocumentMetadata(
            case_id=case_id,
            purpose=purpose,
            file_name=name,
            declared_size_bytes=len(data) if declared is None else declared,
            **meta,
        ),
    )
    for start in range(0, len(data), chunk):
        yield pb.UploadDocumentRequest(chunk=data[start : start + chunk])


async def upload(
    stub: pb_grpc.DossierServiceAsyncStub, data: bytes, case_id: str, key: str, **kw: Any
) -> pb.Document:
    return (await stub.UploadDocument(upload_messages(data, case_id, key, **kw))).document


async def download(stub: pb_grpc.DossierServiceAsyncStub, document_id: str) -> tuple[pb.Document, bytes]:
    parts: list[bytes] = []
    metadata = pb.Document()
    async for message in stub.DownloadDocument(pb.DownloadDocumentRequest(document_id=document_id)):
        if message.WhichOneof("part") == "metadata":
            metadata = message.metadata
        else:
            parts.append(message.chunk)
    return metadata, b"".join(parts)


async def read_object(dossier: Dossier, key: str) -> bytes:
    return b"".join([chunk async for chunk in dossier.store.get(key)])


async def nothing_left(dossier: Dossier, expected_documents: int) -> None:
    rows = await dossier.sql("SELECT count(*) FROM documents")
    assert rows[0][0] == expected_documents
    assert len(await dossier.object_keys()) == expected_documents
    assert not list(dossier.settings.scratch_dir.iterdir())


@pytest.mark.req("CASE-04")
@pytest.mark.req("CASE-12")
@pytest.mark.req("SEC-03")
@pytest.mark.req("SEC-07")
async def test_documents_round_trip_encrypted_each_under_its_own_key(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await dossier.patient()
    case = await create_case(alice)
    files = {
        "report.pdf": (samples.pdf(b"compte rendu", pages=3), pb.DOCUMENT_CONTENT_TYPE_PDF),
        "photo.jpg": (samples.image("JPEG"), pb.DOCUMENT_CONTENT_TYPE_JPEG),
        "scan.png": (samples.image("PNG", (400, 300)) + b"", pb.DOCUMENT_CONTENT_TYPE_PNG),
        "ct.dcm": (samples.dicom(), pb.DOCUMENT_CONTENT_TYPE_DICOM),
        # Type comes from the content, never from the name.
        "named-like-a.pdf": (samples.image("PNG"), pb.DOCUMENT_CONTENT_TYPE_PNG),
    }
    stored: dict[str, pb.Document] = {}
    for index, (name, (data, expected_type)) in enumerate(files.items()):
        document = await upload(alice, data, case.case_id, f"up-{index}", name=name, chunk=100)
        assert document.status == pb.DOCUMENT_STATUS_AVAILABLE, name
        assert document.content_type == expected_type, name
        assert document.sha256_hex == hashlib.sha256(data).hexdigest()
        assert (document.size_bytes, document.file_name) == (len(data), name)
        assert document.source == pb.DOCUMENT_SOURCE_UPLOAD
        stored[name] = document
    # A retried upload (same key) returns the first result and stores nothing new.
    again = await upload(alice, files["report.pdf"][0], case.case_id, "up-0", name="report.pdf")
    assert again.document_id == stored["report.pdf"].document_id
    await nothing_left(dossier, len(files))
    for name, document in stored.items():
        metadata, body = await download(alice, document.document_id)
        assert body == files[name][0] and metadata.document_id == document.document_id
    # At rest: ciphertext only, a header naming the master key, a different data key per object.
    rows = await dossier.sql(
        "SELECT document_id, object_key, wrapped_key, master_key_id, master_key_version FROM documents"
    )
    assert len({bytes(r.wrapped_key) for r in rows}) == len(rows)
    for row in rows:
        blob = await read_object(dossier, row.object_key)
        assert blob.startswith(b"SODOC\x01") and b'"master_key_id": "dossier"' in blob[:2000]
        assert row.document_id.encode() in blob[:2000]
        assert b"compte rendu" not in blob and b"PSEUDO-1" not in blob
    listed = await alice.ListDocuments(pb.ListDocumentsRequest(case_id=case.case_id))
    assert {d.document_id for d in listed.documents} == {d.document_id for d in stored.values()}
    # Others never reach a document, by id or by listing.
    for stub in (
        await dossier.patient("bob"),
        await dossier.doctor("doctor-x"),
        await dossier.as_("partner-1", Role.PARTNER_USER),
    ):
        document_id = stored["ct.dcm"].document_id
        await expect_status(
            stub.GetDocument(pb.GetDocumentRequest(document_id=document_id)), grpc.StatusCode.NOT_FOUND
        )
        await expect_status(download(stub, document_id), grpc.StatusCode.NOT_FOUND)


@pytest.mark.req("SEC-07")
@pytest.mark.req("CASE-04")
async def test_bad_uploads_get_a_clear_status_and_leave_nothing_behind(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    good = samples.pdf(b"ok")
    cases: list[tuple[str, Any, str]] = [
        (
            "executable named .pdf",
            upload_messages(b"MZ\x90\x00" + os.urandom(300), case_id, "b1"),
            "unsupported",
        ),
        ("text file", upload_messages(b"hello " * 100, case_id, "b2", name="notes.txt"), "unsupported"),
        (
            "pdf with javascript",
            upload_messages(samples.pdf_with_javascript(), case_id, "b3"),
            "active content",
        ),
        (
            "pdf launch action",
            upload_messages(samples.pdf_with_launch_action(), case_id, "b4"),
            "active content",
        ),
        (
            "pdf embedded file",
            upload_messages(samples.pdf_with_embedded_file(), case_id, "b5"),
            "active content",
        ),
        ("zero bytes", upload_messages(b"", case_id, "b6"), "empty"),
        ("zero bytes declared 1", upload_messages(b"", case_id, "b6b", declared=1), "empty"),
        ("over the limit declared", upload_messages(good, case_id, "b7", declared=MAX_BYTES + 1), "limit"),
        (
            "over the limit streamed",
            upload_messages(good + b"\0" * MAX_BYTES, case_id, "b8", declared=MAX_BYTES, chunk=1024 * 1024),
            "limit",
        ),
        (
            "more bytes than declared",
            upload_messages(good + b"\0" * 10, case_id, "b8b", declared=len(good)),
            "declared",
        ),
        ("cut half-way", upload_messages(good[: len(good) // 2], case_id, "b9", declared=len(good)), "cut"),
        ("path traversal", upload_messages(good, case_id, "b10", name="../../etc/passwd"), "path"),
        ("windows path", upload_messages(good, case_id, "b11", name="C:\\temp\\x.pdf"), "path"),
        ("control characters", upload_messages(good, case_id, "b12", name="a\nb.pdf"), "control"),
        ("truncated pdf", upload_messages(good[:200], case_id, "b13"), "malformed"),
        (
            "dicom with an executable preamble",
            upload_messages(samples.dicom(b"MZ" + b"\0" * 126), case_id, "b14"),
            "preamble",
        ),
        (
            "dicom that does not parse",
            upload_messages(b"\0" * 128 + b"DICM" + os.urandom(64), case_id, "b15"),
            "parse",
        ),
    ]
    for label, messages, expected in cases:
        details = await expect_status(alice.UploadDocument(messages), IA)
        assert expected in details, (label, details)

    # Metadata first, bytes after: anything else is refused.
    async def bytes_first() -> AsyncIterator[pb.UploadDocumentRequest]:
        yield pb.UploadDocumentRequest(chunk=good)

    await expect_status(alice.UploadDocument(bytes_first()), IA)

    async def metadata_twice() -> AsyncIterator[pb.UploadDocumentRequest]:
        for message in upload_messages(good, case_id, "b16"):
            yield message
            yield pb.UploadDocumentRequest(metadata=pb.UploadDocumentMetadata(case_id=case_id))

    await expect_status(alice.UploadDocument(metadata_twice()), IA)
    await nothing_left(dossier, 0)


@pytest.mark.req("SEC-07")
async def test_a_client_that_disconnects_mid_upload_leaves_nothing(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    data = samples.pdf(os.urandom(16).hex().encode()) + b"\n%" + b"x" * (1024 * 1024)
    sent = asyncio.Event()

    async def slow() -> AsyncIterator[pb.UploadDocumentRequest]:
        messages = upload_messages(data, case_id, "gone", chunk=256 * 1024)
        yield next(messages)
        yield next(messages)
        sent.set()
        await asyncio.sleep(30)  # the client goes away before sending the rest

    # A bare channel: closing it drops the connection, as a client that goes away does.
    token = dossier.token("alice", Role.PATIENT)
    channel = grpc.aio.insecure_channel(dossier.target)
    call = pb_grpc.DossierServiceStub(channel).UploadDocument(
        slow(), metadata=(("authorization", f"Bearer {token}"),)
    )
    await sent.wait()
    await asyncio.sleep(0.3)  # the server has the first chunks
    await channel.close()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await call
    for _ in range(50):
        if not list(dossier.settings.scratch_dir.iterdir()):
            break
        await asyncio.sleep(0.1)
    await nothing_left(dossier, 0)


@pytest.mark.req("SEC-07")
async def test_malware_is_rejected_and_documents_stay_quarantined_until_a_clean_scan(
    dossier: Dossier,
) -> None:
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    infected = await upload(
        alice, samples.pdf(EICAR.replace(b"(", b"\\(").replace(b")", b"\\)")), case_id, "m1"
    )
    assert infected.status == pb.DOCUMENT_STATUS_REJECTED
    await expect_status(download(alice, infected.document_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert await dossier.object_keys() == []  # malware is never stored
    # Scanner down: the document is kept, quarantined, and cannot be downloaded.
    real_scanner = dossier.vault.scanner
    dossier.vault.scanner = ClamdScanner(str(dossier.settings.scratch_dir / "no-clamd.sock"), timeout=2)
    clean = samples.pdf(b"clean")
    waiting = await upload(alice, clean, case_id, "m2")
    dirty = await upload(alice, samples.image("PNG") + EICAR, case_id, "m3")
    assert waiting.status == dirty.status == pb.DOCUMENT_STATUS_QUARANTINED
    await expect_status(download(alice, waiting.document_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert await dossier.vault.rescan_quarantined() == 0  # still down: nothing changes
    dossier.vault.scanner = real_scanner
    assert await dossier.vault.rescan_quarantined() == 2
    get = alice.GetDocument
    assert (
        await get(pb.GetDocumentRequest(document_id=waiting.document_id))
    ).document.status == pb.DOCUMENT_STATUS_AVAILABLE
    assert (
        await get(pb.GetDocumentRequest(document_id=dirty.document_id))
    ).document.status == pb.DOCUMENT_STATUS_REJECTED
    assert (await download(alice, waiting.document_id))[1] == clean
    assert await dossier.object_keys() == [
        f"documents/{waiting.document_id}"
    ]  # the infected object was destroyed


@pytest.mark.req("SEC-02")
@pytest.mark.req("SEC-03")
async def test_tampering_is_detected_and_a_master_key_rotation_only_rewraps(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    data = samples.pdf(os.urandom(100_000).hex().encode())  # several encrypted chunks
    document = await upload(alice, data, case_id, "k1")
    key = f"documents/{document.document_id}"
    original = await read_object(dossier, key)

    async def put(blob: bytes) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield blob

        await dossier.store.put(key, one())

    # Rotation: a new master key version; data keys are re-wrapped, objects untouched.
    create_master_key(dossier.settings.master_keys_dir, "dossier")
    dossier.vault.keyring = Keyring.load(dossier.settings.master_keys_dir, "dossier", create_if_missing=False)
    assert await dossier.vault.rewrap_keys() == 1
    assert (await dossier.sql("SELECT master_key_version FROM documents"))[0][0] == 2
    (dossier.settings.master_keys_dir / "dossier.v1.key").unlink()  # the old version is retired
    dossier.vault.keyring = Keyring.load(dossier.settings.master_keys_dir, "dossier", create_if_missing=False)
    assert await read_object(dossier, key) == original
    assert (await download(alice, document.document_id))[1] == data
    # A flipped byte, a dropped final chunk, or another document's object: DATA_LOSS.
    flipped = bytearray(original)
    flipped[-100] ^= 1
    for forged in (
        bytes(flipped),
        original[: -(64 * 1024 + 28) // 2],
        original[: len(original) - (len(original) - 300) % (64 * 1024 + 28)],
    ):
        await put(forged)
        await expect_status(download(alice, document.document_id), grpc.StatusCode.DATA_LOSS)
    other = await upload(alice, samples.pdf(b"other"), case_id, "k2")
    await put(await read_object(dossier, f"documents/{other.document_id}"))
    await expect_status(download(alice, document.document_id), grpc.StatusCode.DATA_LOSS)


@pytest.mark.req("CASE-04")
@pytest.mark.req("CASE-06")
@pytest.mark.req("SEC-05")
async def test_postal_documents_flags_and_replacements(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    received = Timestamp()
    received.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    scan = samples.pdf(b"courrier")

    def postal(key: str) -> Iterator[pb.AddPostalDocumentRequest]:
        yield pb.AddPostalDocumentRequest(
            idempotency_key=key,
            metadata=pb.PostalDocumentMetadata(
                case_id=case_id, file_name="courrier.pdf", declared_size_bytes=len(scan), received_at=received
            ),
        )
        yield pb.AddPostalDocumentRequest(chunk=scan)

    await expect_status(alice.AddPostalDocument(postal("p0")), grpc.StatusCode.PERMISSION_DENIED)
    plain = await dossier.as_("coord-plain", Role.COORDINATOR)
    await expect_status(plain.AddPostalDocument(postal("p1")), grpc.StatusCode.NOT_FOUND)
    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)
    added = (await coordinator.AddPostalDocument(postal("p2"))).document
    assert added.source == pb.DOCUMENT_SOURCE_POSTAL_MAIL and added.status == pb.DOCUMENT_STATUS_AVAILABLE
    assert added.received_by_post_at.ToSeconds() == received.ToSeconds()
    assert (await download(alice, added.document_id))[1] == scan  # the patient sees it in their file
    # The assigned doctor flags it: the patient is asked for a new copy in the thread.
    await assign(dossier, case_id)
    doctor = await dossier.doctor()
    await expect_status(
        alice.FlagDocument(
            pb.FlagDocumentRequest(
                idempotency_key="f0", document_id=added.document_id, reason=pb.DOCUMENT_FLAG_REASON_UNREADABLE
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    flagged = (
        await doctor.FlagDocument(
            pb.FlagDocumentRequest(
                idempotency_key="f1", document_id=added.document_id, reason=pb.DOCUMENT_FLAG_REASON_UNREADABLE
            )
        )
    ).document
    assert flagged.status == pb.DOCUMENT_STATUS_FLAGGED
    assert flagged.flag_reason == pb.DOCUMENT_FLAG_REASON_UNREADABLE
    thread = (await alice.ListMessages(pb.ListMessagesRequest(case_id=case_id))).messages
    assert [(m.kind, list(m.attachment_document_ids)) for m in thread] == [
        (pb.MESSAGE_KIND_DOCUMENT_REQUEST, [added.document_id])
    ]
    new_copy = samples.pdf(b"courrier lisible")
    replacement = await upload(alice, new_copy, case_id, "r1", replaces_document_id=added.document_id)
    assert replacement.replaces_document_id == added.document_id
    old = (await alice.GetDocument(pb.GetDocumentRequest(document_id=added.document_id))).document
    assert old.status == pb.DOCUMENT_STATUS_REPLACED
    # Only a flagged document can be replaced.
    await expect_status(
        alice.UploadDocument(
            upload_messages(new_copy, case_id, "r2", replaces_document_id=replacement.document_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await nothing_left(dossier, 2)


@pytest.mark.req("ACC-03")
async def test_proofs_of_representation_are_account_level_documents_of_their_uploader(
    dossier: Dossier,
) -> None:
    alice = await dossier.patient()
    proof = samples.pdf(b"jugement de tutelle")
    document = await upload(alice, proof, "", "proof-1", purpose=pb.DOCUMENT_PURPOSE_PROOF_OF_REPRESENTATION)
    assert document.case_id == "" and document.status == pb.DOCUMENT_STATUS_AVAILABLE
    assert (await download(alice, document.document_id))[1] == proof
    await expect_status(
        download(await dossier.patient("bob"), document.document_id), grpc.StatusCode.NOT_FOUND
    )
    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)
    assert (await download(coordinator, document.document_id))[1] == proof  # staff check the proof
    # A medical document always belongs to a case.
    await expect_status(alice.UploadDocument(upload_messages(proof, "", "proof-2")), IA)
    history = (await alice.ListAccessLog(pb.ListAccessLogRequest())).entries
    assert {(e.actor_account_id, e.action) for e in history} >= {
        ("alice", pb.ACCESS_ACTION_CREATE),
        (COORDINATOR, pb.ACCESS_ACTION_DOWNLOAD),
    }
