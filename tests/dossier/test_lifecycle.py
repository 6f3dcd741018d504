"""A subject's medical file through its lifecycle: FHIR export (GDPR-01, GDPR-05),
archive out of day-to-day reach with a logged legal read path (RET-02, RET-07),
restriction (GDPR-04), and purge by crypto-shredding (GDPR-03, RET-02); SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle
from secondopinion.dossier.v1 import dossier_pb2 as pb

from services.dossier.domain.crypto import CryptoError, unwrap_for_subject
from services.shared.auth import Role
from tests.dossier import samples
from tests.dossier.conftest import ARCHIVIST, COORDINATOR, Dossier, assign, create_case, expect_status
from tests.dossier.test_documents import download, read_object, upload
from tests.dossier.test_forms_and_exchanges import PATHOLOGY, PRE_FORM

NF, PD = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
FP, IA = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT
ADDRESS = "jeanne.martin@medecin.mssante.fr"


async def full_file(dossier: Dossier, patient: str = "alice", key: str = "a") -> dict[str, Any]:
    """A case with every kind of data: forms, a document, notes, messages, a sealed report,
    the treating physician; and an account-level proof."""
    stub = await dossier.patient(patient)
    case = await create_case(stub, f"case-{key}")
    for kind, answers in ((pb.FORM_KIND_PRE_FORM, PRE_FORM), (pb.FORM_KIND_PATHOLOGY, PATHOLOGY)):
        await stub.SubmitFormAnswers(
            pb.SubmitFormAnswersRequest(
                idempotency_key=f"{key}-form-{kind}",
                case_id=case.case_id,
                kind=kind,
                answers_json=json.dumps(answers),
            )
        )
    pdf = samples.pdf(b"compte rendu")
    document = await upload(stub, pdf, case.case_id, f"{key}-doc")
    proof = await upload(
        stub, samples.image("PNG"), "", f"{key}-proof", purpose=pb.DOCUMENT_PURPOSE_IDENTITY_PROOF
    )
    await stub.SaveCaseNotes(
        pb.SaveCaseNotesRequest(idempotency_key=f"{key}-n", case_id=case.case_id, text="Q ?")
    )
    await stub.SetTreatingPhysician(
        pb.SetTreatingPhysicianRequest(
            idempotency_key=f"{key}-tp",
            case_id=case.case_id,
            display_name="Dr Martin",
            secure_messaging_address=ADDRESS,
        )
    )
    doctor_account = f"doctor-of-{patient}"
    await assign(dossier, case.case_id, doctor_account=doctor_account, assignment_id=f"asg-{key}")
    doctor = await dossier.doctor(doctor_account)
    message = (
        await doctor.SendMessage(
            pb.SendMessageRequest(
                idempotency_key=f"{key}-m1",
                case_id=case.case_id,
                kind=pb.MESSAGE_KIND_GENERAL,
                body="Bonjour",
            )
        )
    ).message
    await stub.SendMessage(
        pb.SendMessageRequest(
            idempotency_key=f"{key}-m2", case_id=case.case_id, kind=pb.MESSAGE_KIND_GENERAL, body="Merci",
            attachment_document_ids=[document.document_id], in_reply_to_message_id=message.message_id,
        )
    )  # fmt: skip
    draft = (
        await doctor.SaveReportDraft(
            pb.SaveReportDraftRequest(idempotency_key=f"{key}-r", case_id=case.case_id, body="Avis : RAS")
        )
    ).report
    worker = await dossier.worker()
    await worker.DeliverReport(
        pb.DeliverReportRequest(idempotency_key=f"{key}-dl", report_id=draft.report_id)
    )
    return {
        "case": case,
        "document": document,
        "pdf": pdf,
        "proof": proof,
        "report_id": draft.report_id,
        "doctor": doctor,
    }


def export_request(subject: str, key: str = "x1") -> pb.ExportSubjectDataRequest:
    return pb.ExportSubjectDataRequest(idempotency_key=key, subject_id=subject, rights_request_id="rr-1")


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("CASE-12")
async def test_the_export_is_a_valid_fhir_bundle_of_everything_the_person_gave(dossier: Dossier) -> None:
    alice = await full_file(dossier, "alice", "a")
    await full_file(dossier, "bob", "b")
    worker = await dossier.worker()
    await expect_status((await dossier.patient()).ExportSubjectData(export_request("alice")), PD)
    await expect_status((await dossier.as_("dpo-1", Role.DPO)).ExportSubjectData(export_request("alice")), PD)
    await expect_status(
        worker.ExportSubjectData(pb.ExportSubjectDataRequest(idempotency_key="k", subject_id="alice")), IA
    )
    exported = await worker.ExportSubjectData(export_request("alice"))
    bundle = json.loads(exported.fhir_bundle_json)
    parsed = Bundle.model_validate(bundle)  # FHIR R4 (fhir.resources' R4B models), re-read
    assert parsed.type == "collection" and len(parsed.entry or []) == exported.resource_count
    types = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
    assert types == {
        "ServiceRequest": 1,
        "Practitioner": 1,  # the treating physician the person named
        "QuestionnaireResponse": 2,
        "DocumentReference": 2,  # the medical document and the identity proof
        "Communication": 3,  # the notes and two messages
        "DiagnosticReport": 1,
    }
    resources = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    case = alice["case"]
    assert resources[case.case_id]["identifier"][0]["value"] == case.case_reference
    answers = [r for r in resources.values() if r["resourceType"] == "QuestionnaireResponse"]
    pre = next(r for r in answers if ":pre_form|" in r["questionnaire"])
    patient = next(i for i in pre["item"] if i["linkId"] == "patient")
    assert {"linkId": "first_name", "answer": [{"valueString": "Léa"}]} in patient["item"]
    assert pre["status"] == "completed" and pre["subject"] == {"reference": "Patient/alice"}
    assert resources[alice["report_id"]]["conclusion"] == "Avis : RAS"
    texts = {p.get("contentString") for r in resources.values() if r["resourceType"] == "Communication"
             for p in r.get("payload", [])}  # fmt: skip
    assert {"Q ?", "Bonjour", "Merci"} <= texts
    # Documents are listed and fetched one by one, and they are the same bytes.
    assert sorted(exported.document_ids) == sorted(
        [alice["document"].document_id, alice["proof"].document_id]
    )
    _, data = await download(worker, alice["document"].document_id)
    assert data == alice["pdf"]
    # Nothing of bob's.
    assert (
        "bob" not in exported.fhir_bundle_json.decode()
        and "doctor-of-bob" not in exported.fhir_bundle_json.decode()
    )
    # The export is in alice's access history.
    entries = (await (await dossier.patient()).ListAccessLog(pb.ListAccessLogRequest())).entries
    assert any(
        e.action == pb.ACCESS_ACTION_EXPORT and e.purpose == pb.ACCESS_PURPOSE_RIGHTS_REQUEST for e in entries
    )
    # Someone with no file: a valid, empty bundle.
    empty = await worker.ExportSubjectData(export_request("nobody", "x2"))
    assert empty.resource_count == 0 and Bundle.model_validate(json.loads(empty.fhir_bundle_json))


@pytest.mark.req("RET-02")
@pytest.mark.req("RET-07")
@pytest.mark.req("SEC-05")
async def test_archived_files_leave_every_normal_path_and_are_read_only_for_a_logged_legal_reason(
    dossier: Dossier,
) -> None:
    alice = await full_file(dossier, "alice", "a")
    bob = await full_file(dossier, "bob", "b")
    worker = await dossier.worker()
    case_id = alice["case"].case_id
    await expect_status(
        (await dossier.patient()).ArchiveSubject(
            pb.ArchiveSubjectRequest(idempotency_key="a", subject_id="alice")
        ),
        PD,
    )
    archived = await worker.ArchiveSubject(
        pb.ArchiveSubjectRequest(idempotency_key="arc-1", subject_id="alice")
    )
    counts = {c.category: c.count for c in archived.archived}
    assert counts == {
        "cases": 1, "form_answers": 2, "documents": 2, "messages": 2, "case_notes": 1, "reports": 1,
    }  # fmt: skip
    again = await worker.ArchiveSubject(pb.ArchiveSubjectRequest(idempotency_key="arc-1", subject_id="alice"))
    assert again.archived_at == archived.archived_at
    # Out of day-to-day reach for everyone, the person included.
    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)
    for stub in (await dossier.patient(), alice["doctor"], coordinator, worker):
        await expect_status(stub.GetCase(pb.GetCaseRequest(case_id=case_id)), NF)
        await expect_status(stub.ListMessages(pb.ListMessagesRequest(case_id=case_id)), NF)
        await expect_status(stub.GetReport(pb.GetReportRequest(report_id=alice["report_id"])), NF)
        await expect_status(
            stub.GetDocument(pb.GetDocumentRequest(document_id=alice["document"].document_id)), NF
        )
    await expect_status(
        (await dossier.patient()).GetDocument(pb.GetDocumentRequest(document_id=alice["proof"].document_id)),
        NF,
    )
    assert not (
        await (await dossier.patient()).ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE))
    ).cases
    await expect_status(
        worker.UpdateCaseStatus(
            pb.UpdateCaseStatusRequest(idempotency_key="u", case_id=case_id, status=pb.CASE_STATUS_CANCELLED)
        ),
        NF,
    )
    # Bob's file is untouched.
    assert (await (await dossier.patient("bob")).GetCase(pb.GetCaseRequest(case_id=bob["case"].case_id))).case

    # The archive-read path: the DPO or a coordinator holding archive access (not the
    # health-data habilitation alone), a legal reason and a reference, logged.
    def read(purpose: int = pb.ARCHIVE_READ_PURPOSE_LITIGATION, reference: str = "RG 26/01234") -> Any:
        return pb.ReadArchivedSubjectRequest(subject_id="alice", purpose=purpose, reference=reference)  # type: ignore[arg-type]

    for stub in (
        await dossier.patient(),
        await dossier.as_("coord-plain", Role.COORDINATOR),
        coordinator,  # health data only
        await dossier.as_(ARCHIVIST, Role.PATIENT),  # the claim without the role
        alice["doctor"],
        worker,
    ):
        await expect_status(stub.ReadArchivedSubject(read()), PD)
    archivist = await dossier.as_(ARCHIVIST, Role.COORDINATOR)
    dpo = await dossier.as_("dpo-1", Role.DPO)
    await expect_status(dpo.ReadArchivedSubject(read(purpose=pb.ARCHIVE_READ_PURPOSE_UNSPECIFIED)), IA)
    await expect_status(dpo.ReadArchivedSubject(read(reference=" ")), IA)
    await expect_status(dpo.ReadArchivedSubject(pb.ReadArchivedSubjectRequest(
        subject_id="bob", purpose=pb.ARCHIVE_READ_PURPOSE_LITIGATION, reference="x")), NF)  # fmt: skip
    for stub in (dpo, archivist):
        got = await stub.ReadArchivedSubject(read())
        assert got.archived_at == archived.archived_at and got.logged_count == 1
        bundle = Bundle.model_validate(json.loads(got.fhir_bundle_json))
        assert any(e.resource.id == case_id for e in bundle.entry or [])  # type: ignore[union-attr]
    history = (await dpo.ListAccessLog(pb.ListAccessLogRequest(subject_id="alice", case_id=case_id))).entries
    legal = [e for e in history if e.purpose == pb.ACCESS_PURPOSE_LEGAL_ARCHIVE]
    assert [e.actor_account_id for e in legal] == [ARCHIVIST, "dpo-1"]  # newest first
    assert any(e.action == pb.ACCESS_ACTION_LIFECYCLE for e in history)


@pytest.mark.req("GDPR-04")
async def test_a_restricted_file_is_kept_readable_by_the_person_and_not_processed(dossier: Dossier) -> None:
    alice = await full_file(dossier, "alice", "a")
    case_id = alice["case"].case_id
    patient, worker, dpo = (
        await dossier.patient(),
        await dossier.worker(),
        await dossier.as_("dpo-1", Role.DPO),
    )

    def restrict(key: str, restricted: bool) -> pb.RestrictSubjectRequest:
        return pb.RestrictSubjectRequest(
            idempotency_key=key, subject_id="alice", rights_request_id="rr-2", restricted=restricted
        )

    await expect_status(patient.RestrictSubject(restrict("p", True)), PD)
    await expect_status(alice["doctor"].RestrictSubject(restrict("d", True)), PD)
    done = await dpo.RestrictSubject(restrict("r1", True))
    assert {c.category: c.count for c in done.affected}["cases"] == 1
    # The person still reads their file; nobody else processes it, nothing is written.
    case = (await patient.GetCase(pb.GetCaseRequest(case_id=case_id))).case
    assert case.processing_restricted
    assert (await patient.ListMessages(pb.ListMessagesRequest(case_id=case_id))).messages
    assert "restricted" in await expect_status(
        alice["doctor"].GetCase(pb.GetCaseRequest(case_id=case_id)), FP
    )
    await expect_status(
        (await dossier.as_(COORDINATOR, Role.COORDINATOR)).GetCase(pb.GetCaseRequest(case_id=case_id)), FP
    )
    await expect_status(
        patient.SaveCaseNotes(pb.SaveCaseNotesRequest(idempotency_key="n2", case_id=case_id, text="x")), FP
    )
    await expect_status(
        worker.ShareReportWithTreatingPhysician(
            pb.ShareReportWithTreatingPhysicianRequest(idempotency_key="s", report_id=alice["report_id"])
        ),
        FP,
    )
    assert not (
        await alice["doctor"].ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_ASSIGNED_TO_ME))
    ).cases
    # Lifted by the worker: processing resumes.
    await worker.RestrictSubject(restrict("r2", False))
    assert not (await alice["doctor"].GetCase(pb.GetCaseRequest(case_id=case_id))).case.processing_restricted
    await worker.ShareReportWithTreatingPhysician(
        pb.ShareReportWithTreatingPhysicianRequest(idempotency_key="s", report_id=alice["report_id"])
    )


@pytest.mark.req("GDPR-03")
@pytest.mark.req("RET-02")
@pytest.mark.req("SEC-02")
async def test_a_purge_destroys_the_subject_key_and_deletes_rows_and_objects(dossier_stores: Dossier) -> None:
    dossier = dossier_stores
    alice = await full_file(dossier, "alice", "a")
    bob = await full_file(dossier, "bob", "b")
    worker = await dossier.worker()
    case_id = alice["case"].case_id
    document_id = alice["document"].document_id
    # What an attacker with a copy of the database and the store would hold.
    (wrapped,) = (
        await dossier.sql("SELECT wrapped_key FROM documents WHERE document_id = :d", d=document_id)
    )[0]
    stolen_object = await read_object(dossier, f"documents/{document_id}")
    answers_id, sealed_answers = (
        await dossier.sql(
            "SELECT form_answers_id, answers_sealed FROM form_answers WHERE case_id = :c LIMIT 1", c=case_id
        )
    )[0]
    async with dossier.vault.sessions() as session:  # before the purge: readable with alice's key
        assert await dossier.vault.gate.keys.load(session, "alice")
    assert json.loads(dossier.vault.keyring.open_text(bytes(sealed_answers), f"form_answers:{answers_id}"))
    assert unwrap_for_subject(bytes(wrapped), document_id, "alice")

    def purge(key: str, rights_request: str = "rr-3") -> pb.PurgeSubjectRequest:
        return pb.PurgeSubjectRequest(
            idempotency_key=key, subject_id="alice", rights_request_id=rights_request
        )

    await expect_status((await dossier.patient()).PurgeSubject(purge("p")), PD)
    # An erasure request waits for a request in progress to end.
    assert "in progress" in await expect_status(worker.PurgeSubject(purge("p1")), FP)
    await worker.UpdateCaseStatus(
        pb.UpdateCaseStatusRequest(idempotency_key="close", case_id=case_id, status=pb.CASE_STATUS_CANCELLED)
    )
    done = await worker.PurgeSubject(purge("p2"))
    assert done.subject_key_destroyed
    assert {c.category: c.count for c in done.purged} == {
        "cases": 1, "form_answers": 2, "documents": 2, "objects": 2,
        "messages": 2, "case_notes": 1, "reports": 1,
    }  # fmt: skip
    (kept,) = done.retained
    assert (
        kept.category == "access_log"
        and kept.legal_basis == pb.RETENTION_LEGAL_BASIS_EVIDENCE
        and kept.count > 0
    )
    assert kept.retained_until.seconds > done.purged_at.seconds
    # A retry answers the same report.
    assert (await worker.PurgeSubject(purge("p2"))) == done

    # Nothing of alice is returned any more; bob's file is whole.
    patient = await dossier.patient()
    await expect_status(patient.GetCase(pb.GetCaseRequest(case_id=case_id)), NF)
    await expect_status(
        patient.GetDocument(pb.GetDocumentRequest(document_id=alice["proof"].document_id)), NF
    )
    assert not (await patient.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE))).cases
    assert (await worker.ExportSubjectData(export_request("alice", "after"))).resource_count == 0
    for table, column in (
        ("cases", "filer_account_id = 'alice'"),
        ("form_answers", f"case_id = '{case_id}'"),
        ("messages", f"case_id = '{case_id}'"),
        ("reports", f"case_id = '{case_id}'"),
        ("case_notes", f"case_id = '{case_id}'"),
        ("documents", "uploaded_by_account_id = 'alice'"),
        ("subject_keys", "subject_id = 'alice'"),
        ("secure_message_outbox", f"case_id = '{case_id}'"),
    ):
        assert (await dossier.sql(f"SELECT count(*) FROM {table} WHERE {column}"))[0][0] == 0, table
    keys = await dossier.object_keys()
    assert f"documents/{document_id}" not in keys and f"documents/{alice['proof'].document_id}" not in keys
    assert f"documents/{bob['document'].document_id}" in keys
    _, data = await download(await dossier.patient("bob"), bob["document"].document_id)
    assert data == bob["pdf"]
    # Crypto-shredding: the copies taken before cannot be decrypted, the key is gone.
    async with dossier.vault.sessions() as session:
        assert not await dossier.vault.gate.keys.load(session, "alice")
    with pytest.raises(CryptoError):
        unwrap_for_subject(bytes(wrapped), document_id, "alice")
    with pytest.raises(CryptoError):
        dossier.vault.keyring.open_text(bytes(sealed_answers), f"form_answers:{answers_id}")
    assert stolen_object  # the object's header names the subject key, which no longer exists
    assert b'"subject_key_id": "alice"' in stolen_object[:400]
    # The access log, kept as evidence, is intact.
    chain = await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(
        pb.VerifyAccessLogChainRequest()
    )
    assert chain.intact


@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
@pytest.mark.req("SEC-01")
async def test_the_lifecycle_worker_lists_a_subjects_cases_with_their_status_in_one_logged_call(
    dossier: Dossier,
) -> None:
    worker = await dossier.worker()
    alice = await dossier.patient("alice")
    submitted = await create_case(alice, "l-submitted")  # created submitted
    paying = await create_case(alice, "l-paying")
    cancelled = await create_case(alice, "l-cancelled")
    for n, (case, status) in enumerate(
        ((paying, pb.CASE_STATUS_AWAITING_PAYMENT), (cancelled, pb.CASE_STATUS_CANCELLED))
    ):
        await worker.UpdateCaseStatus(
            pb.UpdateCaseStatusRequest(idempotency_key=f"l-{n}", case_id=case.case_id, status=status)
        )
    restricted = await create_case(await dossier.patient("carol"), "l-carol")
    await worker.RestrictSubject(
        pb.RestrictSubjectRequest(
            idempotency_key="l-r", subject_id="carol", rights_request_id="rr", restricted=True
        )
    )
    await create_case(await dossier.patient("dave"), "l-dave")
    await worker.ArchiveSubject(pb.ArchiveSubjectRequest(idempotency_key="l-a", subject_id="dave"))

    def listing(subject: str) -> pb.ListSubjectCasesRequest:
        return pb.ListSubjectCasesRequest(subject_id=subject)

    async def entries() -> list[Any]:
        return await dossier.sql(
            "SELECT actor_account_id, action, object_kind, object_id, subject_account_id, purpose"
            " FROM access_log ORDER BY sequence"
        )

    before = len(await entries())
    got = await worker.ListSubjectCases(listing("alice"))
    assert [(c.case_id, c.status, c.processing_restricted) for c in got.cases] == [
        (submitted.case_id, pb.CASE_STATUS_SUBMITTED, False),
        (paying.case_id, pb.CASE_STATUS_AWAITING_PAYMENT, False),
        (cancelled.case_id, pb.CASE_STATUS_CANCELLED, False),
    ]
    # One entry for the call, whatever the number of cases: the subject, read as the platform.
    logged = await entries()
    assert logged[before:] == [("worker", "read", "case", "alice", "alice", "platform_processing")]
    # A restricted case is listed, its status not read (GDPR-04); archived ones are out of
    # reach (RET-07); someone with no case gets an empty list (still logged).
    (carol,) = (await worker.ListSubjectCases(listing("carol"))).cases
    assert (carol.case_id, carol.status, carol.processing_restricted) == (
        restricted.case_id,
        pb.CASE_STATUS_UNSPECIFIED,
        True,
    )
    assert not (await worker.ListSubjectCases(listing("dave"))).cases
    assert not (await worker.ListSubjectCases(listing("nobody"))).cases
    assert len(await entries()) == len(logged) + 3
    # The platform only: not the person, staff, or another service.
    for stub in (
        alice,
        await dossier.as_("dpo-1", Role.DPO),
        await dossier.as_(COORDINATOR, Role.COORDINATOR),
        await dossier.as_("billing", Role.SERVICE),
    ):
        await expect_status(stub.ListSubjectCases(listing("alice")), PD)
    for bad in ("", "x" * 37):
        await expect_status(worker.ListSubjectCases(listing(bad)), IA)
    assert len(await entries()) == len(logged) + 3
