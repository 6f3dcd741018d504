"""Forms, notes, the case thread, abuse reports and the sealed report (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import grpc
import pytest
from secondopinion.dossier.v1 import dossier_pb2 as pb

from services.shared.auth import Role
from tests.dossier import samples
from tests.dossier.conftest import ASSISTANT, Dossier, assign, create_case, expect_status
from tests.dossier.test_documents import upload

IA, NF, FP, PD = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)
PRE_FORM = {
    "patient": {"last_name": "Martin", "first_name": "Léa", "birth_date": "1980-02-29", "sex": "female"},
    "sub_specialty": "breast",
    "preferred_language": "fr",
}
PATHOLOGY = {
    "tumour_site": "breast",
    "diagnosis_date": "2026-09-01",
    "stage": "II",
    "question_for_doctors": "?",
}


@pytest.mark.req("CASE-02")
@pytest.mark.req("CASE-03")
async def test_form_definitions_are_versioned_per_therapeutic_area(dossier: Dossier) -> None:
    alice = await dossier.patient()
    pathology: dict[str, set[str]] = {}
    for area in ("oncology", "cardiology", "orthopaedics", "neurology"):
        for kind in (pb.FORM_KIND_PRE_FORM, pb.FORM_KIND_PATHOLOGY):
            got = (
                await alice.GetFormDefinition(pb.GetFormDefinitionRequest(kind=kind, therapeutic_area=area))
            ).definition
            assert got.version == 1 and got.schema_format == pb.FORM_SCHEMA_FORMAT_JSON_SCHEMA
            assert got.form_definition_id == f"{area}/{'pre_form' if kind == 1 else 'pathology'}/1"
            schema = json.loads(got.definition_json)
            assert schema["$schema"].endswith("2020-12/schema")
            if kind == pb.FORM_KIND_PATHOLOGY:
                pathology[area] = set(schema["properties"])
            else:  # what designating the doctors needs: the sub-specialty of the area
                assert "sub_specialty" in schema["required"]
    assert (
        pathology["oncology"]
        != pathology["cardiology"]
        != pathology["neurology"]
        != pathology["orthopaedics"]
    )
    await expect_status(
        alice.GetFormDefinition(
            pb.GetFormDefinitionRequest(kind=pb.FORM_KIND_PRE_FORM, therapeutic_area="astrology")
        ),
        IA,
    )
    await expect_status(
        alice.GetFormDefinition(
            pb.GetFormDefinitionRequest(kind=pb.FORM_KIND_PRE_FORM, therapeutic_area="oncology", version=9)
        ),
        NF,
    )


@pytest.mark.req("CASE-02")
@pytest.mark.req("CASE-03")
@pytest.mark.req("CASE-12")
async def test_answers_are_validated_drafts_saved_and_submitted_versions_immutable(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    kind = pb.FORM_KIND_PATHOLOGY

    def draft(key: str, answers: object) -> pb.SaveFormDraftRequest:
        return pb.SaveFormDraftRequest(
            idempotency_key=key, case_id=case_id, kind=kind, answers_json=json.dumps(answers)
        )

    def submit(key: str, answers: object | None = None) -> pb.SubmitFormAnswersRequest:
        return pb.SubmitFormAnswersRequest(
            idempotency_key=key,
            case_id=case_id,
            kind=kind,
            answers_json=json.dumps(answers) if answers else "",
        )

    # A draft may be incomplete, not wrong.
    first = (await alice.SaveFormDraft(draft("d1", {"tumour_site": "breast"}))).answers
    assert (first.version, first.status) == (1, pb.FORM_ANSWERS_STATUS_DRAFT)
    details = await expect_status(alice.SaveFormDraft(draft("d2", {"stage": "V", "pain": 3})), IA)
    assert "/stage (enum)" in details and "V" not in details.split(":", 1)[1]  # paths, never values
    await expect_status(alice.SaveFormDraft(draft("d3", ["not", "an", "object"])), IA)
    await expect_status(alice.SubmitFormAnswers(submit("s0")), IA)  # the draft is incomplete
    assert "(required)" in await expect_status(
        alice.SubmitFormAnswers(submit("s0b", {"tumour_site": "lung"})), IA
    )
    await expect_status(
        alice.SubmitFormAnswers(submit("s0c", {**PATHOLOGY, "diagnosis_date": "2026-13-45"})), IA
    )
    submitted = (await alice.SubmitFormAnswers(submit("s1", PATHOLOGY))).answers
    assert (submitted.version, submitted.status) == (1, pb.FORM_ANSWERS_STATUS_SUBMITTED)  # the draft, frozen
    # A change after submission makes a new version; version 1 stays as it was.
    await alice.SaveFormDraft(draft("d4", {**PATHOLOGY, "stage": "III"}))
    second = (await alice.SubmitFormAnswers(submit("s2"))).answers
    assert (second.version, json.loads(second.answers_json)["stage"]) == (2, "III")
    v1 = (await alice.GetFormAnswers(pb.GetFormAnswersRequest(case_id=case_id, kind=kind, version=1))).answers
    assert json.loads(v1.answers_json) == PATHOLOGY and v1.status == pb.FORM_ANSWERS_STATUS_SUBMITTED
    versions = (await alice.ListFormVersions(pb.ListFormVersionsRequest(case_id=case_id, kind=kind))).versions
    assert [(v.version, v.status, v.answers_json) for v in versions] == [
        (1, pb.FORM_ANSWERS_STATUS_SUBMITTED, ""),
        (2, pb.FORM_ANSWERS_STATUS_SUBMITTED, ""),
    ]
    # The assigned doctor reads submitted answers only, never the patient's work in progress.
    await alice.SaveFormDraft(draft("d5", {"tumour_site": "lung"}))
    await assign(dossier, case_id)
    doctor = await dossier.doctor()
    seen = (await doctor.GetFormAnswers(pb.GetFormAnswersRequest(case_id=case_id, kind=kind))).answers
    assert seen.version == 2
    await expect_status(doctor.SaveFormDraft(draft("d6", PATHOLOGY)), NF)
    # Stored sealed: the database holds no clinical text in clear.
    rows = await dossier.sql("SELECT answers_sealed FROM form_answers")
    assert rows and all(b"breast" not in bytes(r[0]) for r in rows)
    # The pre-form of the case's area.
    pre = (
        await alice.SubmitFormAnswers(
            pb.SubmitFormAnswersRequest(
                idempotency_key="pre",
                case_id=case_id,
                kind=pb.FORM_KIND_PRE_FORM,
                answers_json=json.dumps(PRE_FORM),
            )
        )
    ).answers
    assert pre.form_definition_id == "oncology/pre_form/1"


@pytest.mark.req("CASE-14")
async def test_staff_fill_in_under_the_personal_assistant_mandate_traced_as_such(dossier: Dossier) -> None:
    assistant = await dossier.as_(ASSISTANT, Role.COORDINATOR)
    case = await create_case(assistant, key="pa-1", on_behalf_of_account_id="alice")
    assert case.filer_account_id == "alice" and case.entered_under_mandate
    await expect_status(
        create_case(
            await dossier.as_("coord-plain", Role.COORDINATOR), key="pa-2", on_behalf_of_account_id="alice"
        ),
        PD,
    )
    await expect_status(
        create_case(await dossier.patient("bob"), key="pa-3", on_behalf_of_account_id="alice"), IA
    )
    answers = (
        await assistant.SaveFormDraft(
            pb.SaveFormDraftRequest(
                idempotency_key="f1",
                case_id=case.case_id,
                kind=pb.FORM_KIND_PRE_FORM,
                answers_json=json.dumps(PRE_FORM),
            )
        )
    ).answers
    assert answers.entered_under_mandate and answers.entered_by_account_id == ASSISTANT
    notes = (
        await assistant.SaveCaseNotes(
            pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case.case_id, text="dicté par téléphone")
        )
    ).notes
    assert notes.entered_under_mandate
    alice = await dossier.patient("alice")
    own = (
        await alice.SaveCaseNotes(
            pb.SaveCaseNotesRequest(idempotency_key="n2", case_id=case.case_id, text="moi")
        )
    ).notes
    assert not own.entered_under_mandate and own.version == 2
    pa_entries = [
        e
        for e in (await alice.ListAccessLog(pb.ListAccessLogRequest())).entries
        if e.purpose == pb.ACCESS_PURPOSE_PERSONAL_ASSISTANT
    ]
    assert {e.actor_account_id for e in pa_entries} == {ASSISTANT} and len(pa_entries) >= 3


@pytest.mark.req("CASE-05")
@pytest.mark.req("CASE-06")
@pytest.mark.req("CASE-17")
@pytest.mark.req("CASE-12")
async def test_notes_thread_read_receipts_and_abuse_reports(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    await assign(dossier, case_id)
    doctor = await dossier.doctor()
    saved = (
        await alice.SaveCaseNotes(
            pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case_id, text="Mes questions")
        )
    ).notes
    assert saved.version == 1
    assert (await doctor.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case_id))).notes.text == "Mes questions"
    await expect_status(
        alice.SaveCaseNotes(
            pb.SaveCaseNotesRequest(idempotency_key="n2", case_id=case_id, text="x" * 20_001)
        ),
        IA,
    )

    def send(key: str, kind: int, body: str, **kw: object) -> pb.SendMessageRequest:
        return pb.SendMessageRequest(idempotency_key=key, case_id=case_id, kind=kind, body=body, **kw)  # type: ignore[arg-type]

    question = (
        await doctor.SendMessage(send("m1", pb.MESSAGE_KIND_INFORMATION_REQUEST, "Depuis quand ?"))
    ).message
    await expect_status(
        alice.SendMessage(send("m2", pb.MESSAGE_KIND_INFORMATION_REQUEST, "x")), IA
    )  # doctors ask
    await expect_status(doctor.SendMessage(send("m3", pb.MESSAGE_KIND_INFORMATION_RESPONSE, "x")), IA)
    await expect_status(alice.SendMessage(send("m4", pb.MESSAGE_KIND_GENERAL, "  ")), IA)
    scan = await upload(
        alice, samples.image("PNG"), case_id, "att", purpose=pb.DOCUMENT_PURPOSE_MESSAGE_ATTACHMENT
    )
    answer = (
        await alice.SendMessage(
            send(
                "m5",
                pb.MESSAGE_KIND_INFORMATION_RESPONSE,
                "Depuis mars",
                attachment_document_ids=[scan.document_id],
                in_reply_to_message_id=question.message_id,
            )
        )
    ).message
    assert list(answer.attachment_document_ids) == [scan.document_id]
    await expect_status(
        alice.SendMessage(send("m6", pb.MESSAGE_KIND_GENERAL, "x", attachment_document_ids=["nope"])), NF
    )
    coordinator_plain = await dossier.as_("coord-plain", Role.COORDINATOR)
    await expect_status(coordinator_plain.ListMessages(pb.ListMessagesRequest(case_id=case_id)), NF)
    # Read receipts.
    marked = await alice.MarkMessagesRead(
        pb.MarkMessagesReadRequest(idempotency_key="r1", case_id=case_id, up_to_message_id=answer.message_id)
    )
    assert marked.marked_count == 1  # the doctor's question; her own answer needs no receipt
    thread = (await doctor.ListMessages(pb.ListMessagesRequest(case_id=case_id))).messages
    assert [m.message_id for m in thread] == [question.message_id, answer.message_id]
    assert [r.account_id for r in thread[0].read_receipts] == ["alice"] and not thread[1].read_receipts
    page = await doctor.ListMessages(pb.ListMessagesRequest(case_id=case_id, page_size=1))
    assert page.next_page_token and len(page.messages) == 1
    # Abuse: reported by a participant, queued for staff, resolved by hiding the message.
    report = (
        await alice.ReportAbuse(
            pb.ReportAbuseRequest(
                idempotency_key="a1",
                case_id=case_id,
                target_kind=pb.ABUSE_TARGET_KIND_MESSAGE,
                target_id=question.message_id,
                category=pb.ABUSE_CATEGORY_HARASSMENT,
            )
        )
    ).abuse_report
    assert report.status == pb.ABUSE_REPORT_STATUS_OPEN
    await expect_status(
        (await dossier.patient("bob")).ReportAbuse(
            pb.ReportAbuseRequest(
                idempotency_key="a2",
                case_id=case_id,
                target_kind=pb.ABUSE_TARGET_KIND_CASE_NOTES,
                category=pb.ABUSE_CATEGORY_SPAM,
            )
        ),
        NF,
    )
    await expect_status(alice.ListAbuseReports(pb.ListAbuseReportsRequest()), PD)
    staff = await dossier.as_("coord-plain", Role.COORDINATOR)
    queue = (
        await staff.ListAbuseReports(pb.ListAbuseReportsRequest(status=pb.ABUSE_REPORT_STATUS_OPEN))
    ).abuse_reports
    assert [r.abuse_report_id for r in queue] == [report.abuse_report_id]
    resolved = (
        await staff.ResolveAbuseReport(
            pb.ResolveAbuseReportRequest(
                idempotency_key="res-1",
                abuse_report_id=report.abuse_report_id,
                resolution=pb.ABUSE_RESOLUTION_CONTENT_HIDDEN,
            )
        )
    ).abuse_report
    assert (
        resolved.status == pb.ABUSE_REPORT_STATUS_RESOLVED
        and resolved.resolved_by_account_id == "coord-plain"
    )
    hidden = (await alice.ListMessages(pb.ListMessagesRequest(case_id=case_id))).messages[0]
    assert hidden.hidden and hidden.body == ""
    assert not (
        await staff.ListAbuseReports(pb.ListAbuseReportsRequest(status=pb.ABUSE_REPORT_STATUS_OPEN))
    ).abuse_reports


@pytest.mark.req("DOC-04")
@pytest.mark.req("SEC-02")
async def test_the_report_is_sealed_on_delivery_and_completed_by_addenda(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case_id = (await create_case(alice)).case_id
    await assign(dossier, case_id)
    doctor = await dossier.doctor()
    await expect_status(
        alice.SaveReportDraft(pb.SaveReportDraftRequest(idempotency_key="x", case_id=case_id, body="x")), PD
    )
    await expect_status(
        (await dossier.doctor("doctor-other")).SaveReportDraft(
            pb.SaveReportDraftRequest(idempotency_key="y", case_id=case_id, body="x")
        ),
        NF,
    )
    report_file = await upload(
        doctor, samples.pdf(b"avis"), case_id, "rf", purpose=pb.DOCUMENT_PURPOSE_REPORT
    )
    draft = (
        await doctor.SaveReportDraft(
            pb.SaveReportDraftRequest(idempotency_key="d1", case_id=case_id, body="Avis v1")
        )
    ).report
    again = (
        await doctor.SaveReportDraft(
            pb.SaveReportDraftRequest(
                idempotency_key="d2",
                case_id=case_id,
                body="Avis v2",
                attachment_document_id=report_file.document_id,
            )
        )
    ).report
    assert again.report_id == draft.report_id and again.status == pb.REPORT_STATUS_DRAFT
    # The patient sees nothing until delivery.
    assert not (await alice.ListCaseReports(pb.ListCaseReportsRequest(case_id=case_id))).reports
    await expect_status(alice.GetReport(pb.GetReportRequest(report_id=draft.report_id)), NF)
    await expect_status(
        doctor.DeliverReport(pb.DeliverReportRequest(idempotency_key="dl", report_id=draft.report_id)), PD
    )
    worker = await dossier.worker()
    sealed = (
        await worker.DeliverReport(pb.DeliverReportRequest(idempotency_key="dl-1", report_id=draft.report_id))
    ).report
    assert (
        sealed.status == pb.REPORT_STATUS_SEALED and len(sealed.seal_sha256_hex) == 64 and sealed.body == ""
    )
    got = (await alice.GetReport(pb.GetReportRequest(report_id=draft.report_id))).report
    assert (got.body, got.attachment_document_id) == ("Avis v2", report_file.document_id)
    # Sealed: no further change; an addendum is a new sealed record.
    await expect_status(
        doctor.SaveReportDraft(pb.SaveReportDraftRequest(idempotency_key="d3", case_id=case_id, body="v3")),
        FP,
    )
    addendum = (
        await doctor.AddReportAddendum(
            pb.AddReportAddendumRequest(
                idempotency_key="ad1", parent_report_id=draft.report_id, body="Précision"
            )
        )
    ).report
    assert addendum.kind == pb.REPORT_KIND_ADDENDUM and addendum.status == pb.REPORT_STATUS_SEALED
    assert addendum.parent_report_id == draft.report_id and addendum.seal_sha256_hex != sealed.seal_sha256_hex
    listed = (await alice.ListCaseReports(pb.ListCaseReportsRequest(case_id=case_id))).reports
    assert [(r.report_id, r.body) for r in listed] == [(draft.report_id, ""), (addendum.report_id, "")]
    # The seal covers the content: an edit in the database is detectable.
    from services.dossier.domain import reports as report_rules
    from services.dossier.models import Report

    async with dossier.vault.sessions() as session:
        await dossier.vault.gate.keys.load(session, "alice")  # text is sealed under alice's key
        row = await session.get(Report, draft.report_id)
        assert row is not None and await report_rules.verify_seal(session, dossier.vault.keyring, row)
        row.attachment_document_id = ""
        assert not await report_rules.verify_seal(session, dossier.vault.keyring, row)
