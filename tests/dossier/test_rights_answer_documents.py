"""Rights-request answers (issue 10): the platform stores the export archive of an access or
portability request as an account-level document of the person (GDPR-01, GDPR-05). Only a
platform service may upload for a person, only with this purpose; a zip is accepted for it
alone, checked and scanned like any upload (SEC-07); the person alone downloads it, every
access and refusal logged (SEC-01); a purge crypto-shreds it (GDPR-03). SQLite and
PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc

from services.dossier.domain.crypto import CryptoError, unwrap_for_subject
from services.dossier.settings import DossierSettings
from services.shared.auth import Role
from tests.dossier import samples
from tests.dossier.conftest import (
    COORDINATOR,
    EICAR,
    MAX_BYTES,
    Dossier,
    assign,
    create_case,
    expect_status,
    start_dossier,
)
from tests.dossier.test_documents import download, read_object, upload, upload_messages

NF, PD = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
IA = grpc.StatusCode.INVALID_ARGUMENT
ANSWER = pb.DOCUMENT_PURPOSE_RIGHTS_REQUEST_ANSWER


def export_zip(**extra: bytes) -> bytes:
    """An archive shaped like the lifecycle worker's export (deflated, like it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fhir-bundle.json", b'{"resourceType": "Bundle", "type": "collection"}')
        archive.writestr("summary.txt", "Vos données\n".encode())
        archive.writestr("documents/d1-scan.pdf", samples.pdf(b"compte rendu"))
        for name, data in extra.items():
            archive.writestr(name.replace("__", "/"), data)
    return buffer.getvalue()


async def store_answer(
    stub: pb_grpc.DossierServiceAsyncStub, data: bytes, subject: str, key: str, **meta: Any
) -> pb.Document:
    fields: dict[str, Any] = {"purpose": ANSWER, "name": "export.zip", "subject_account_id": subject}
    return await upload(stub, data, "", key, **{**fields, **meta})


def stored_zip(size: int) -> bytes:
    """A valid zip of about `size` bytes (stored, incompressible content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("fhir-bundle.json", b'{"resourceType": "Bundle", "type": "collection"}')
        archive.writestr("documents/scan.bin", os.urandom(size))
    return buffer.getvalue()


async def documents_in_table(dossier: Dossier) -> int:
    return int((await dossier.sql("SELECT count(*) FROM documents"))[0][0])


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-05")
async def test_the_platform_stores_the_answer_and_only_its_person_downloads_it(dossier: Dossier) -> None:
    worker = await dossier.worker()
    archive = export_zip()
    document = await store_answer(worker, archive, "alice", "answer:rr-1")
    assert document.case_id == "" and document.purpose == ANSWER
    assert document.status == pb.DOCUMENT_STATUS_AVAILABLE  # scanned by the real clamd
    assert document.content_type == pb.DOCUMENT_CONTENT_TYPE_ZIP
    assert document.source == pb.DOCUMENT_SOURCE_PLATFORM
    assert document.uploaded_by_account_id == "alice"  # the person owns it
    assert document.sha256_hex == hashlib.sha256(archive).hexdigest()
    # A retried upload (same key) is the same document; nothing new is stored.
    again = await store_answer(worker, archive, "alice", "answer:rr-1")
    assert again.document_id == document.document_id
    assert await documents_in_table(dossier) == 1

    # Sealed under alice's own key, like everything of hers (crypto-shredding).
    (subject_key,) = (
        await dossier.sql(
            "SELECT subject_key_id FROM documents WHERE document_id = :d", d=document.document_id
        )
    )[0]
    assert subject_key == "alice"
    stored = await read_object(dossier, f"documents/{document.document_id}")
    assert b"fhir-bundle.json" not in stored and b'"subject_key_id": "alice"' in stored[:400]

    alice = await dossier.patient("alice")
    metadata, body = await download(alice, document.document_id)
    assert body == archive and metadata.file_name == "export.zip"
    assert (await alice.GetDocument(pb.GetDocumentRequest(document_id=document.document_id))).document

    # Nobody else: another patient, a doctor, habilitated staff, the platform itself.
    case = await create_case(await dossier.patient("bob"), "bob-case")
    await assign(dossier, case.case_id, doctor_account="doctor-account-1")
    others = [
        await dossier.patient("bob"),
        await dossier.doctor("doctor-account-1"),
        await dossier.as_(COORDINATOR, Role.COORDINATOR),
        await dossier.as_("dpo-1", Role.DPO),
        worker,
    ]
    for other in others:
        await expect_status(download(other, document.document_id), NF)
        await expect_status(other.GetDocument(pb.GetDocumentRequest(document_id=document.document_id)), NF)

    # SEC-01: alice's access history shows who stored it, her download and the refusals.
    history = (await alice.ListAccessLog(pb.ListAccessLogRequest())).entries
    about = [e for e in history if e.object_id == document.document_id]
    seen = {(e.actor_account_id, e.action, e.purpose) for e in about}
    assert ("worker", pb.ACCESS_ACTION_CREATE, pb.ACCESS_PURPOSE_RIGHTS_REQUEST) in seen
    assert ("alice", pb.ACCESS_ACTION_DOWNLOAD, pb.ACCESS_PURPOSE_OWN_SPACE) in seen
    assert ("alice", pb.ACCESS_ACTION_READ, pb.ACCESS_PURPOSE_OWN_SPACE) in seen
    refused = {e.actor_account_id for e in about if e.action == pb.ACCESS_ACTION_REFUSED}
    assert refused == {"bob", "doctor-account-1", COORDINATOR, "dpo-1", "worker"}
    assert all(
        e.purpose == pb.ACCESS_PURPOSE_NONE_ESTABLISHED for e in about if e.action == pb.ACCESS_ACTION_REFUSED
    )
    # Bob's own history is about bob: alice's answer is not named there.
    bobs = (await (await dossier.patient("bob")).ListAccessLog(pb.ListAccessLogRequest())).entries
    assert all(e.object_id != document.document_id for e in bobs)
    chain = await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(
        pb.VerifyAccessLogChainRequest()
    )
    assert chain.intact


@pytest.mark.req("GDPR-01")
@pytest.mark.req("SEC-05")
@pytest.mark.req("SEC-07")
async def test_only_a_platform_service_uploads_for_a_person_and_only_this_purpose(dossier: Dossier) -> None:
    archive = export_zip()
    alice = await dossier.patient("alice")
    worker = await dossier.worker()
    billing = await dossier.as_("billing", Role.SERVICE)  # a service, not a platform one
    # Nobody but the platform stores an answer, not even for themselves.
    for caller, key in ((alice, "a1"), (billing, "b1")):
        await expect_status(caller.UploadDocument(upload_messages(archive, "", key, purpose=ANSWER,
                            subject_account_id="alice")), PD)  # fmt: skip
    await expect_status(alice.UploadDocument(upload_messages(archive, "", "a2", purpose=ANSWER)), PD)
    await expect_status(alice.UploadDocument(upload_messages(samples.pdf(), "", "a3", purpose=ANSWER)), PD)
    # subject_account_id is for answers only; an answer names its person, has no case.
    case = await create_case(alice, "alice-case")
    refusals = [
        upload_messages(samples.pdf(), "", "w1", purpose=pb.DOCUMENT_PURPOSE_IDENTITY_PROOF,
                        subject_account_id="alice"),
        upload_messages(samples.pdf(), case.case_id, "w2", subject_account_id="alice"),
        upload_messages(archive, "", "w3", purpose=ANSWER),
        upload_messages(archive, case.case_id, "w4", purpose=ANSWER, subject_account_id="alice"),
        upload_messages(archive, "", "w5", purpose=ANSWER, subject_account_id="x" * 37),
    ]  # fmt: skip
    for messages in refusals:
        await expect_status(worker.UploadDocument(messages), IA)

    # A zip is a rights-request answer, never an upload of the person's.
    for purpose, case_id in (
        (pb.DOCUMENT_PURPOSE_MEDICAL_RECORD, case.case_id),
        (pb.DOCUMENT_PURPOSE_IDENTITY_PROOF, ""),
    ):
        detail = await expect_status(
            alice.UploadDocument(upload_messages(archive, case_id, f"zip-{purpose}", purpose=purpose)), IA
        )
        assert "PDF, JPEG, PNG or DICOM" in detail
    # An answer is a zip or a PDF letter: not an image; and the zip is checked.
    detail = await expect_status(
        worker.UploadDocument(upload_messages(samples.image("PNG"), "", "w6", purpose=ANSWER,
                              subject_account_id="alice")), IA,
    )  # fmt: skip
    assert "zip archive or a PDF" in detail
    letter = await store_answer(worker, samples.pdf(b"reponse"), "alice", "w7", name="reponse.pdf")
    assert letter.content_type == pb.DOCUMENT_CONTENT_TYPE_PDF
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as slipping:
        slipping.writestr("../../etc/cron.d/evil", b"* * * * * root true")
    bad = {
        "malformed": b"PK\x03\x04" + b"\0" * 200,
        "zip-slip": buffer.getvalue(),
    }
    for name, data in bad.items():
        detail = await expect_status(
            worker.UploadDocument(upload_messages(data, "", f"bad-{name}", purpose=ANSWER,
                                  subject_account_id="alice")), IA,
        )  # fmt: skip
        assert "zip archive" in detail, name
    # Nothing half-done remains: the letter only.
    assert await documents_in_table(dossier) == 1
    assert len(await dossier.object_keys()) == 1
    assert not list(dossier.settings.scratch_dir.iterdir())


@pytest.mark.req("SEC-07")
async def test_an_answer_carrying_malware_is_rejected_like_any_upload(dossier: Dossier) -> None:
    """clamd looks inside the (deflated) archive: the EICAR file within is found."""
    worker = await dossier.worker()
    document = await store_answer(worker, export_zip(documents__d2_x_txt=EICAR), "alice", "answer:infected")
    assert document.status == pb.DOCUMENT_STATUS_REJECTED
    assert await dossier.object_keys() == []  # malware is never stored
    detail = await expect_status(
        download(await dossier.patient("alice"), document.document_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "not available" in detail


@pytest.mark.req("GDPR-03")
@pytest.mark.req("RET-02")
async def test_a_purge_crypto_shreds_the_answer_with_the_rest_of_the_file(dossier: Dossier) -> None:
    worker = await dossier.worker()
    archive = export_zip()
    mine = await store_answer(worker, archive, "alice", "answer:alice")
    bobs = await store_answer(worker, archive, "bob", "answer:bob")
    (wrapped,) = (
        await dossier.sql("SELECT wrapped_key FROM documents WHERE document_id = :d", d=mine.document_id)
    )[0]
    stolen = await read_object(dossier, f"documents/{mine.document_id}")

    done = await worker.PurgeSubject(
        pb.PurgeSubjectRequest(idempotency_key="purge-alice", subject_id="alice", rights_request_id="rr-9")
    )
    assert done.subject_key_destroyed
    assert {c.category: c.count for c in done.purged} == {"documents": 1, "objects": 1}
    await expect_status(download(await dossier.patient("alice"), mine.document_id), NF)
    keys = await dossier.object_keys()
    assert f"documents/{mine.document_id}" not in keys and f"documents/{bobs.document_id}" in keys
    # The copy taken before cannot be decrypted: alice's key is gone.
    assert b'"subject_key_id": "alice"' in stolen[:400]
    with pytest.raises(CryptoError):
        unwrap_for_subject(bytes(wrapped), mine.document_id, "alice")
    # Bob's answer is whole.
    assert (await download(await dossier.patient("bob"), bobs.document_id))[1] == archive


ANSWER_LIMIT = MAX_BYTES + 1024 * 1024  # above the upload limit, as the settings require


@pytest.fixture
async def answer_limited(
    tmp_path: Path, backend: str, clamd_socket: str, request: pytest.FixtureRequest
) -> AsyncIterator[Dossier]:
    """The service with a small rights-answer limit (DOSSIER_MAX_RIGHTS_ANSWER_BYTES)."""
    async for running in start_dossier(
        tmp_path, backend, "local", clamd_socket, request, max_rights_answer_bytes=ANSWER_LIMIT
    ):
        yield running


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
async def test_an_answer_over_the_configured_limit_is_refused_and_nothing_is_stored(
    answer_limited: Dossier,
) -> None:
    dossier = answer_limited
    worker = await dossier.worker()
    assert dossier.vault.max_answer_bytes == ANSWER_LIMIT  # wired from the settings
    # Over the upload limit, within the answer limit: an answer, accepted.
    fits = stored_zip(MAX_BYTES + 256 * 1024)
    assert MAX_BYTES < len(fits) <= ANSWER_LIMIT
    document = await store_answer(worker, fits, "alice", "answer:fits")
    assert document.size_bytes == len(fits) and document.status == pb.DOCUMENT_STATUS_AVAILABLE
    # Over it: refused up front (declared size), or while streaming (a stream that lies).
    big = stored_zip(ANSWER_LIMIT)
    assert len(big) > ANSWER_LIMIT
    detail = await expect_status(
        worker.UploadDocument(
            upload_messages(big, "", "answer:big", purpose=ANSWER, subject_account_id="alice")
        ),
        IA,
    )
    assert f"over the {ANSWER_LIMIT}-byte limit" in detail
    detail = await expect_status(
        worker.UploadDocument(upload_messages(big, "", "answer:lying", purpose=ANSWER,
                              subject_account_id="alice", declared=ANSWER_LIMIT)), IA,
    )  # fmt: skip
    assert f"over the {ANSWER_LIMIT}-byte limit" in detail
    # Nothing of the refused answers remains: no row, no object, no scratch file.
    assert await documents_in_table(dossier) == 1
    assert await dossier.object_keys() == [f"documents/{document.document_id}"]
    assert not list(dossier.settings.scratch_dir.iterdir())


@pytest.mark.req("GDPR-01")
def test_the_answer_limit_is_never_below_the_upload_limit() -> None:
    assert DossierSettings().max_rights_answer_bytes == 2 * 1024 * 1024 * 1024
    with pytest.raises(ValidationError, match="MAX_RIGHTS_ANSWER_BYTES"):
        DossierSettings(max_document_bytes=10 * 1024 * 1024, max_rights_answer_bytes=1024 * 1024)
    equal = DossierSettings(max_document_bytes=1024, max_rights_answer_bytes=1024)
    assert equal.max_rights_answer_bytes == 1024
