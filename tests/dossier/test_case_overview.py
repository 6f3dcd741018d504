"""GetCaseOverview (issue 9): a case page in one read. Its content equals the individual
reads', with the same access rules per role; each call appends exactly one entry to the
access log (the case, read, the caller's purpose), which the person sees in their history;
refusals are logged as before; the chain stays intact under concurrent reads and writes
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain import accesslog
from services.dossier.domain.accesslog import AccessLogUnavailable, Action, ObjectKind, PendingEntry, Purpose
from services.shared.auth import Role
from services.shared.db import session_factory
from tests.dossier import samples
from tests.dossier.conftest import COORDINATOR, EICAR, Dossier, assign, create_case, expect_status
from tests.dossier.test_documents import download, upload
from tests.dossier.test_forms_and_exchanges import PATHOLOGY, PRE_FORM

NF, FP = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION
KINDS = (pb.FORM_KIND_PRE_FORM, pb.FORM_KIND_PATHOLOGY)


async def log_size(dossier: Dossier) -> int:
    return int((await dossier.sql("SELECT count(*) FROM access_log"))[0][0])


async def last_entries(dossier: Dossier, count: int) -> list[Any]:
    return list(
        await dossier.sql(
            "SELECT actor_account_id, actor_role, action, object_kind, object_id, purpose"
            " FROM access_log ORDER BY sequence DESC LIMIT :n",
            n=count,
        )
    )


async def a_full_case(dossier: Dossier) -> dict[str, Any]:
    """Submitted pre-form, pathology form in draft, a clean and an infected document, notes,
    a thread with a read receipt, two assigned doctors, the first with a draft report."""
    alice = await dossier.patient("alice")
    case = await create_case(alice, "overview-case")
    case_id = case.case_id
    await alice.SubmitFormAnswers(
        pb.SubmitFormAnswersRequest(
            idempotency_key="pre",
            case_id=case_id,
            kind=pb.FORM_KIND_PRE_FORM,
            answers_json=json.dumps(PRE_FORM),
        )
    )
    await alice.SaveFormDraft(
        pb.SaveFormDraftRequest(
            idempotency_key="patho", case_id=case_id, kind=pb.FORM_KIND_PATHOLOGY,
            answers_json=json.dumps({"tumour_site": PATHOLOGY["tumour_site"]}),
        )
    )  # fmt: skip
    clean = await upload(alice, samples.pdf(b"compte rendu"), case_id, "doc-clean")
    infected = await upload(
        alice, samples.pdf(EICAR.replace(b"(", b"\\(").replace(b")", b"\\)")), case_id, "doc-infected"
    )
    assert infected.status == pb.DOCUMENT_STATUS_REJECTED
    await alice.SaveCaseNotes(
        pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case_id, text="Question ?")
    )
    await assign(dossier, case_id, doctor_account="doctor-1", doctor_id="doc-1", assignment_id="asg-1")
    await assign(dossier, case_id, doctor_account="doctor-2", doctor_id="doc-2", assignment_id="asg-2")
    doctor = await dossier.doctor("doctor-1")
    asked = await doctor.SendMessage(
        pb.SendMessageRequest(
            idempotency_key="m1",
            case_id=case_id,
            kind=pb.MESSAGE_KIND_INFORMATION_REQUEST,
            body="Un scanner ?",
        )
    )
    await alice.MarkMessagesRead(
        pb.MarkMessagesReadRequest(
            idempotency_key="r1", case_id=case_id, up_to_message_id=asked.message.message_id
        )
    )
    await alice.SendMessage(
        pb.SendMessageRequest(
            idempotency_key="m2", case_id=case_id, kind=pb.MESSAGE_KIND_GENERAL, body="Le voici",
            attachment_document_ids=[clean.document_id], in_reply_to_message_id=asked.message.message_id,
        )
    )  # fmt: skip
    draft = await doctor.SaveReportDraft(
        pb.SaveReportDraftRequest(idempotency_key="draft", case_id=case_id, body="Avis en cours")
    )
    return {"case_id": case_id, "draft": draft.report}


async def individual_reads(stub: pb_grpc.DossierServiceAsyncStub, case_id: str) -> dict[str, Any]:
    """What a case page read call by call before the overview existed."""
    return {
        "case": (await stub.GetCase(pb.GetCaseRequest(case_id=case_id))).case,
        "documents": list((await stub.ListDocuments(pb.ListDocumentsRequest(case_id=case_id))).documents),
        "messages": list((await stub.ListMessages(pb.ListMessagesRequest(case_id=case_id))).messages),
        "reports": list((await stub.ListCaseReports(pb.ListCaseReportsRequest(case_id=case_id))).reports),
        "notes": (await stub.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case_id))).notes,
        "versions": [
            list((await stub.ListFormVersions(pb.ListFormVersionsRequest(case_id=case_id, kind=k))).versions)
            for k in KINDS
        ],
    }


async def latest_answers(
    stub: pb_grpc.DossierServiceAsyncStub, case_id: str, kind: pb.FormKind.ValueType
) -> pb.FormAnswers | None:
    try:
        return (await stub.GetFormAnswers(pb.GetFormAnswersRequest(case_id=case_id, kind=kind))).answers
    except grpc.aio.AioRpcError as error:
        if error.code() != NF:
            raise
        return None


@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-05")
@pytest.mark.req("DOC-02")
async def test_the_overview_equals_the_individual_reads_for_every_role(dossier: Dossier) -> None:
    built = await a_full_case(dossier)
    case_id, draft = built["case_id"], built["draft"]
    people = {
        "patient": (await dossier.patient("alice"), pb.ACCESS_PURPOSE_OWN_SPACE),
        "doctor with the draft": (await dossier.doctor("doctor-1"), pb.ACCESS_PURPOSE_CASE_REVIEW),
        "other assigned doctor": (await dossier.doctor("doctor-2"), pb.ACCESS_PURPOSE_CASE_REVIEW),
        "habilitated coordinator": (
            await dossier.as_(COORDINATOR, Role.COORDINATOR),
            pb.ACCESS_PURPOSE_COORDINATION,
        ),
        "case workflow": (await dossier.worker(), pb.ACCESS_PURPOSE_PLATFORM_PROCESSING),
    }
    for who, (stub, _) in people.items():
        expected = await individual_reads(stub, case_id)
        got = await stub.GetCaseOverview(pb.GetCaseOverviewRequest(case_id=case_id))
        assert got.case == expected["case"], who
        assert list(got.documents) == expected["documents"], who
        assert not got.documents_next_page_token and not got.messages_next_page_token
        assert list(got.messages) == expected["messages"], who
        assert got.notes == expected["notes"], who
        assert [f.kind for f in got.forms] == list(KINDS)
        assert [list(f.versions) for f in got.forms] == expected["versions"], who
        assert all(not f.HasField("answers") and not f.HasField("definition") for f in got.forms)
        # Reports: the listing's metadata; only the caller's own draft carries its body.
        listed = {r.report_id: r for r in got.reports}
        assert [r.report_id for r in got.reports] == [r.report_id for r in expected["reports"]], who
        for report in expected["reports"]:
            if report.report_id == draft.report_id and who == "doctor with the draft":
                body = (await stub.GetReport(pb.GetReportRequest(report_id=draft.report_id))).report.body
                assert body == "Avis en cours"
                report.body = body
            assert listed[report.report_id] == report, who

    # What each side sees differs as the rules say (the same in both paths, checked above).
    overviews = {
        who: await stub.GetCaseOverview(pb.GetCaseOverviewRequest(case_id=case_id))
        for who, (stub, _) in people.items()
    }

    def seen(who: str) -> pb.GetCaseOverviewResponse:
        return overviews[who]

    assert len(seen("patient").documents) == 2 and len(seen("doctor with the draft").documents) == 1
    assert [len(f.versions) for f in seen("patient").forms] == [1, 1]
    assert [len(f.versions) for f in seen("other assigned doctor").forms] == [1, 0]
    assert [r.report_id for r in seen("doctor with the draft").reports] == [draft.report_id]
    assert not seen("other assigned doctor").reports and not seen("patient").reports
    assert [r.body for r in seen("case workflow").reports] == [""]  # metadata only
    assert seen("patient").messages[0].read_receipts[0].account_id == "alice"
    assert seen("patient").notes.text == "Question ?"

    # Form answers and definitions on request, as GetFormAnswers and GetFormDefinition give them.
    for who, (stub, _) in people.items():
        got = await stub.GetCaseOverview(
            pb.GetCaseOverviewRequest(case_id=case_id, include_form_answers=True)
        )
        for form in got.forms:
            answers = await latest_answers(stub, case_id, form.kind)
            if answers is None:
                assert not form.HasField("answers") and not form.HasField("definition"), who
                continue
            assert form.answers == answers, who
            definition = await stub.GetFormDefinition(
                pb.GetFormDefinitionRequest(kind=form.kind, therapeutic_area=got.case.therapeutic_area)
            )
            assert form.definition == definition.definition, who
    doctor_forms = (
        await people["other assigned doctor"][0].GetCaseOverview(
            pb.GetCaseOverviewRequest(case_id=case_id, include_form_answers=True)
        )
    ).forms
    assert json.loads(doctor_forms[0].answers.answers_json) == PRE_FORM
    assert not doctor_forms[1].HasField("answers")  # a draft is not the doctor's to read
    patient_forms = (
        await people["patient"][0].GetCaseOverview(
            pb.GetCaseOverviewRequest(case_id=case_id, include_form_answers=True)
        )
    ).forms
    assert patient_forms[1].answers.status == pb.FORM_ANSWERS_STATUS_DRAFT


@pytest.mark.req("SEC-01")
async def test_each_overview_appends_exactly_one_entry_the_person_sees_in_their_history(
    dossier: Dossier,
) -> None:
    built = await a_full_case(dossier)
    case_id = built["case_id"]
    callers = [
        ("alice", "PATIENT", await dossier.patient("alice"), pb.ACCESS_PURPOSE_OWN_SPACE),
        ("doctor-1", "REFERENT_DOCTOR", await dossier.doctor("doctor-1"), pb.ACCESS_PURPOSE_CASE_REVIEW),
        (
            COORDINATOR,
            "COORDINATOR",
            await dossier.as_(COORDINATOR, Role.COORDINATOR),
            pb.ACCESS_PURPOSE_COORDINATION,
        ),
    ]
    purposes = {
        pb.ACCESS_PURPOSE_OWN_SPACE: "own_space",
        pb.ACCESS_PURPOSE_CASE_REVIEW: "case_review",
        pb.ACCESS_PURPOSE_COORDINATION: "coordination",
    }
    for account, _, stub, purpose in callers:
        for include in (False, True):
            before = await log_size(dossier)
            await stub.GetCaseOverview(
                pb.GetCaseOverviewRequest(case_id=case_id, include_form_answers=include)
            )
            assert await log_size(dossier) == before + 1
            assert (await last_entries(dossier, 1))[0] == (
                account,
                {"alice": "patient", "doctor-1": "referent_doctor"}.get(account, "coordinator"),
                "read",
                "case",
                case_id,
                purposes[purpose],
            )
    # The person's access history shows each read: who, as what, why.
    history = (
        await (await dossier.patient("alice")).ListAccessLog(pb.ListAccessLogRequest(case_id=case_id))
    ).entries
    reads = [
        (e.actor_account_id, e.actor_role, e.purpose)
        for e in history
        if e.action == pb.ACCESS_ACTION_READ and e.object_kind == pb.ACCESS_OBJECT_KIND_CASE
    ]
    for account, role, _, purpose in callers:
        assert reads.count((account, role, purpose)) == 2
    # The individual reads a page used to make cost 6 entries or more (one per message).
    before = await log_size(dossier)
    await individual_reads(await dossier.patient("alice"), case_id)
    assert await log_size(dossier) - before >= 6


@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-05")
@pytest.mark.req("DOC-03")
@pytest.mark.req("GDPR-04")
async def test_refusals_are_the_individual_reads_refusals_and_are_logged(dossier: Dossier) -> None:
    built = await a_full_case(dossier)
    case_id = built["case_id"]
    request = pb.GetCaseOverviewRequest(case_id=case_id, include_form_answers=True)
    refused = {
        "another patient": (await dossier.patient("bob"), "bob", "own_space"),
        "unassigned doctor": (await dossier.doctor("doctor-other"), "doctor-other", "case_review"),
        "partner": (await dossier.as_("partner-1", Role.PARTNER_USER), "partner-1", "none_established"),
        "coordinator without habilitation": (
            await dossier.as_("coord-plain", Role.COORDINATOR),
            "coord-plain",
            "coordination",
        ),
        "dpo": (await dossier.as_("dpo-1", Role.DPO), "dpo-1", "none_established"),
    }
    for who, (stub, account, purpose) in refused.items():
        before = await log_size(dossier)
        assert "not found" in await expect_status(stub.GetCaseOverview(request), NF), who
        assert await log_size(dossier) == before + 1, who
        actor, _, action, kind, object_id, logged_purpose = (await last_entries(dossier, 1))[0]
        assert (actor, action, kind, object_id, logged_purpose) == (
            account,
            "refused",
            "case",
            case_id,
            purpose,
        )
        # As the individual reads answer.
        await expect_status(stub.GetCase(pb.GetCaseRequest(case_id=case_id)), NF)
    # An unknown case: the same answer, nothing to log about.
    before = await log_size(dossier)
    await expect_status(
        (await dossier.patient("alice")).GetCaseOverview(pb.GetCaseOverviewRequest(case_id="nope")), NF
    )
    await expect_status((await dossier.patient("alice")).GetCaseOverview(pb.GetCaseOverviewRequest()), NF)
    assert await log_size(dossier) == before

    # A doctor the patient opposed loses the overview with the rest (DOC-03).
    alice = await dossier.patient("alice")
    await alice.OpposeDoctorAccess(
        pb.OpposeDoctorAccessRequest(idempotency_key="o1", case_id=case_id, doctor_id="doc-2")
    )
    await expect_status((await dossier.doctor("doctor-2")).GetCaseOverview(request), NF)

    # A restricted file (GDPR-04): the person reads it, nobody else processes it.
    dpo = await dossier.as_("dpo-1", Role.DPO)
    await dpo.RestrictSubject(
        pb.RestrictSubjectRequest(
            idempotency_key="rs", subject_id="alice", rights_request_id="rr", restricted=True
        )
    )
    got = await alice.GetCaseOverview(request)
    assert got.case.processing_restricted and got.notes.text == "Question ?"
    for stub in (await dossier.doctor("doctor-1"), await dossier.as_(COORDINATOR, Role.COORDINATOR)):
        assert "restricted" in await expect_status(stub.GetCaseOverview(request), FP)
        await expect_status(stub.GetCase(pb.GetCaseRequest(case_id=case_id)), FP)


@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-02")
async def test_the_chain_stays_intact_under_concurrent_overviews_and_writes(dossier: Dossier) -> None:
    patients = [f"p{i}" for i in range(6)]
    cases: dict[str, str] = {}
    for name in patients:
        stub = await dossier.patient(name)
        cases[name] = (await create_case(stub, f"case-{name}")).case_id
        await assign(
            dossier,
            cases[name],
            doctor_account=f"doc-{name}",
            doctor_id=f"d-{name}",
            assignment_id=f"a-{name}",
        )
    before = await log_size(dossier)
    rounds = 8

    async def reader(name: str, stub: pb_grpc.DossierServiceAsyncStub) -> None:
        for _ in range(rounds):
            got = await stub.GetCaseOverview(pb.GetCaseOverviewRequest(case_id=cases[name]))
            assert got.case.case_id == cases[name]

    async def writer(name: str) -> None:
        stub = await dossier.patient(name)
        for i in range(rounds):
            await stub.SaveCaseNotes(
                pb.SaveCaseNotesRequest(idempotency_key=f"{name}-n{i}", case_id=cases[name], text=f"v{i}")
            )

    read_log = dossier.vault.gate.read_log
    batches = read_log.batches
    tasks = []
    for name in patients:
        tasks += [
            reader(name, await dossier.patient(name)),
            reader(name, await dossier.doctor(f"doc-{name}")),
            reader(name, await dossier.as_(COORDINATOR, Role.COORDINATOR)),
            writer(name),
        ]
    await asyncio.gather(*tasks)
    assert await log_size(dossier) == before + len(patients) * rounds * 4
    # The reads shared transactions (group commit): fewer commits than reads.
    assert read_log.batches - batches < len(patients) * rounds * 3
    verified = await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(
        pb.VerifyAccessLogChainRequest()
    )
    assert verified.intact and verified.checked_count == before + len(patients) * rounds * 4
    sequences = [
        int(row[0]) for row in await dossier.sql("SELECT sequence FROM access_log ORDER BY sequence")
    ]
    assert sequences == list(range(1, len(sequences) + 1))
    for name in patients:
        notes = (
            await (await dossier.patient(name)).GetCaseOverview(
                pb.GetCaseOverviewRequest(case_id=cases[name])
            )
        ).notes
        assert notes.text == f"v{rounds - 1}" and notes.version == rounds


@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-02")
async def test_no_log_no_data_and_the_chain_survives_a_failed_batch(dossier: Dossier) -> None:
    built = await a_full_case(dossier)
    alice = await dossier.patient("alice")
    request = pb.GetCaseOverviewRequest(case_id=built["case_id"])
    before = await log_size(dossier)
    await dossier.sql("ALTER TABLE access_log RENAME TO access_log_away")
    try:
        assert "access log" in await expect_status(
            alice.GetCaseOverview(request), grpc.StatusCode.UNAVAILABLE
        )
        await expect_status(
            alice.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE)), grpc.StatusCode.UNAVAILABLE
        )
    finally:
        await dossier.sql("ALTER TABLE access_log_away RENAME TO access_log")
    assert await log_size(dossier) == before
    await alice.GetCaseOverview(request)
    verified = await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(
        pb.VerifyAccessLogChainRequest()
    )
    assert verified.intact and verified.checked_count == before + 1


def an_entry(i: int) -> PendingEntry:
    return PendingEntry(
        actor_account_id=f"reader-{i}", actor_role="patient", action=Action.READ, object_kind=ObjectKind.CASE,
        object_id=f"case-{i}", case_id=f"case-{i}", subject_account_id=f"reader-{i}", beneficiary_id="",
        purpose=Purpose.OWN_SPACE,
    )  # fmt: skip


@pytest.mark.req("SEC-02")
async def test_the_read_log_retries_a_transient_race_a_bounded_number_of_times(
    dossier: Dossier, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = session_factory(dossier.engine)
    read_log = accesslog.ReadLog(sessions, attempts=3, retry_pause_seconds=0)
    chain = accesslog._chain
    failures = {"left": 2}

    async def racing(session: AsyncSession, entries: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("UPDATE access_log_head", {}, Exception("database is locked"))
        return await chain(session, entries)

    monkeypatch.setattr(accesslog, "_chain", racing)
    before = await log_size(dossier)
    await asyncio.gather(*(read_log.append([an_entry(i)]) for i in range(20)))
    assert await log_size(dossier) == before + 20 and failures["left"] == 0
    # More races than attempts: refused (no log, no data), nothing half-written.
    failures["left"] = 3
    with pytest.raises(AccessLogUnavailable):
        await read_log.append([an_entry(99)])
    assert await log_size(dossier) == before + 20

    # An error that is not a race is not retried.
    async def broken(session: AsyncSession, entries: Any) -> Any:
        failures["left"] += 1
        raise ProgrammingError("INSERT INTO access_log", {}, Exception("no such table"))

    monkeypatch.setattr(accesslog, "_chain", broken)
    failures["left"] = 0
    with pytest.raises(AccessLogUnavailable):
        await read_log.append([an_entry(100)])
    assert failures["left"] == 1
    async with sessions() as session:
        assert (await accesslog.verify_chain(session)).intact


@pytest.mark.req("SEC-01")
@pytest.mark.req("SEC-02")
async def test_document_reads_are_logged_through_the_group_commit_no_log_no_data(dossier: Dossier) -> None:
    """ListDocuments, GetDocument and DownloadDocument write nothing in their own
    transaction: each hands one entry to the read log, committed before anything leaves."""
    built = await a_full_case(dossier)
    case_id = built["case_id"]
    alice, doctor = await dossier.patient("alice"), await dossier.doctor("doctor-1")
    read_log = dossier.vault.gate.read_log
    listed = list((await alice.ListDocuments(pb.ListDocumentsRequest(case_id=case_id))).documents)
    assert len(listed) == 2  # the clean and the rejected file, by upload time
    assert [d.uploaded_at.ToDatetime() for d in listed] == sorted(d.uploaded_at.ToDatetime() for d in listed)
    clean = next(d for d in listed if d.status == pb.DOCUMENT_STATUS_AVAILABLE)
    # Doctors never see a rejected file; paging is unchanged.
    seen = (await doctor.ListDocuments(pb.ListDocumentsRequest(case_id=case_id))).documents
    assert [d.document_id for d in seen] == [clean.document_id]
    first = await alice.ListDocuments(pb.ListDocumentsRequest(case_id=case_id, page_size=1))
    rest = await alice.ListDocuments(
        pb.ListDocumentsRequest(case_id=case_id, page_size=1, page_token=first.next_page_token)
    )
    assert {d.document_id for d in [*first.documents, *rest.documents]} == {d.document_id for d in listed}

    before, batches = await log_size(dossier), read_log.batches
    await alice.ListDocuments(pb.ListDocumentsRequest(case_id=case_id))
    await doctor.GetDocument(pb.GetDocumentRequest(document_id=clean.document_id))
    _, data = await download(alice, clean.document_id)
    assert data
    assert await log_size(dossier) == before + 3
    assert read_log.batches == batches + 3  # one group-commit batch each (calls in sequence)
    assert await last_entries(dossier, 3) == [
        ("alice", "patient", "download", "document", clean.document_id, "own_space"),
        ("doctor-1", "referent_doctor", "read", "document", clean.document_id, "case_review"),
        ("alice", "patient", "read", "document", case_id, "own_space"),
    ]

    # No log, no data: each read is refused while the log cannot be written.
    before = await log_size(dossier)
    await dossier.sql("ALTER TABLE access_log RENAME TO access_log_away")
    try:
        for call in (
            alice.ListDocuments(pb.ListDocumentsRequest(case_id=case_id)),
            alice.GetDocument(pb.GetDocumentRequest(document_id=clean.document_id)),
            download(alice, clean.document_id),
        ):
            assert "access log" in await expect_status(call, grpc.StatusCode.UNAVAILABLE)
    finally:
        await dossier.sql("ALTER TABLE access_log_away RENAME TO access_log")
    assert await log_size(dossier) == before
    verified = await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(
        pb.VerifyAccessLogChainRequest()
    )
    assert verified.intact
