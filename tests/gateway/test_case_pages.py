"""The case pages (issue 9): the patient's page (with its checkout checklist) and the
referent doctor's page each read the dossier once (GetCaseOverview), which the person
sees in their access history as one read of the case, and still show the whole file."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.shared.auth import Role
from tests.dossier.test_forms_and_exchanges import PRE_FORM
from tests.gateway.support import Person, Portal
from tests.gateway.test_portal_security import _upload


def browser(portal: Portal, person: Person) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=portal.url, cookies={"so_session": person.session, "so_cookie_choice": "necessary"}
    )


async def history(dossier: Any, case_id: str) -> list[Any]:
    listed = await dossier.ListAccessLog(dossier_pb2.ListAccessLogRequest(case_id=case_id))
    return list(listed.entries)


@pytest.mark.req("SEC-01")
@pytest.mark.req("DOC-02")
async def test_each_case_page_reads_the_file_once_and_shows_it_whole(portal: Portal) -> None:
    patient = await portal.patient("case-pages@example.org")
    dossier = portal.as_person("dossier", patient.account_id, Role.PATIENT)
    created = await dossier.CreateCase(
        dossier_pb2.CreateCaseRequest(
            idempotency_key="pages-case", filing_capacity=dossier_pb2.FILING_CAPACITY_SELF,
            therapeutic_area="oncology", purpose=dossier_pb2.CASE_PURPOSE_SECOND_OPINION,
            doctor_choice_mode=dossier_pb2.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
        )
    )  # fmt: skip
    case_id = created.case.case_id
    await dossier.SubmitFormAnswers(
        dossier_pb2.SubmitFormAnswersRequest(
            idempotency_key="pages-pre", case_id=case_id, kind=dossier_pb2.FORM_KIND_PRE_FORM,
            answers_json=json.dumps(PRE_FORM),
        )
    )  # fmt: skip
    await dossier.SaveCaseNotes(
        dossier_pb2.SaveCaseNotesRequest(idempotency_key="pages-n", case_id=case_id, text="Quelle suite ?")
    )
    document_id = await _upload(portal, patient.account_id, case_id)
    await portal.scanned_clean(document_id)
    await dossier.SendMessage(
        dossier_pb2.SendMessageRequest(
            idempotency_key="pages-m", case_id=case_id, kind=dossier_pb2.MESSAGE_KIND_GENERAL,
            body="Voici mon bilan",
        )
    )  # fmt: skip

    async with browser(portal, patient) as http:
        before = await history(dossier, case_id)
        page = await http.get(f"/cases/{case_id}")
        assert page.status_code == 200, page.text[:300]
        after = await history(dossier, case_id)
        assert len(after) == len(before) + 1
        read = after[0]
        assert (read.actor_account_id, read.action, read.object_kind, read.purpose) == (
            patient.account_id,
            dossier_pb2.ACCESS_ACTION_READ,
            dossier_pb2.ACCESS_OBJECT_KIND_CASE,
            dossier_pb2.ACCESS_PURPOSE_OWN_SPACE,
        )
        for shown in ("bilan.pdf", "Voici mon bilan", "Quelle suite ?", f"/cases/{case_id}/forms/pre_form"):
            assert shown in page.text
        # The checklist: the pre-form is submitted, the pathology form is not.
        assert f'class="done"><a href="/cases/{case_id}/forms/pre_form"' in page.text
        assert f'class="todo"><a href="/cases/{case_id}/forms/pathology"' in page.text
        # Another patient's case: not found, as before.
        other = await portal.patient("case-pages-other@example.org")
        async with browser(portal, other) as foreign:
            assert (await foreign.get(f"/cases/{case_id}")).status_code == 404

    doctor = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "pages-doctor@example.org", "Dr Page"
    )
    await portal.enrol_totp(doctor)
    async with browser(portal, doctor) as http:
        assert (await http.get(f"/doctor/cases/{case_id}")).status_code == 404  # not assigned yet
        await portal.set_status(case_id, "awaiting_payment", "awaiting_assignment")
        await portal.assign(case_id, doctor, "pages-assignment")
        as_doctor = portal.as_person("dossier", doctor.account_id, Role.REFERENT_DOCTOR)
        await as_doctor.SaveReportDraft(
            dossier_pb2.SaveReportDraftRequest(
                idempotency_key="pages-r", case_id=case_id, body="Avis provisoire"
            )
        )
        before = await history(dossier, case_id)
        page = await http.get(f"/doctor/cases/{case_id}")
        assert page.status_code == 200, page.text[:300]
        after = await history(dossier, case_id)
        assert len(after) == len(before) + 1
        assert (after[0].actor_account_id, after[0].object_kind, after[0].purpose) == (
            doctor.account_id,
            dossier_pb2.ACCESS_OBJECT_KIND_CASE,
            dossier_pb2.ACCESS_PURPOSE_CASE_REVIEW,
        )
        # The submitted pre-form laid out, the file, the thread, the notes, the draft.
        for shown in (
            "Martin",
            "bilan.pdf",
            "Voici mon bilan",
            "Quelle suite ?",
            ">Avis provisoire</textarea>",
        ):
            assert shown in page.text
