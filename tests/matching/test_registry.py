"""The referent-doctor registry over gRPC (DOC-01): details, updates, activity, absences,
the shared therapeutic areas catalog, and who may do what. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from secondopinion.matching.v1 import matching_pb2 as pb

from services.dossier.catalog import therapeutic_area_codes
from services.shared.auth import Role
from tests.matching.conftest import Matching, expect_status, rpps

DAY = timedelta(days=1)


@pytest.mark.req("DOC-01")
async def test_registry_records_doctors_and_refuses_bad_input(matching: Matching) -> None:
    ops = matching.service("ops")
    doctor = await matching.register(
        1, ["oncology", "neurology"], capacity=4, languages=["fr", "en"], sub_specialties=["breast"]
    )
    assert doctor.therapeutic_areas == ["neurology", "oncology"]
    assert doctor.languages == ["en", "fr"]
    assert doctor.sub_specialties == ["breast"]
    assert doctor.active and doctor.current_load == 0 and doctor.max_concurrent_cases == 4
    assert not doctor.HasField("median_turnaround")
    assert doctor.created_at.ToDatetime() == matching.clock.now.replace(tzinfo=None)

    def request(key: str, **fields: object) -> pb.RegisterReferentDoctorRequest:
        values: dict[str, object] = {
            "idempotency_key": key,
            "account_id": f"acc-{key}",
            "rpps_number": rpps(100 + len(key)),
            "display_name": "Dr New",
            "therapeutic_areas": ["cardiology"],
            "max_concurrent_cases": 2,
        }
        values.update(fields)
        return pb.RegisterReferentDoctorRequest(**values)  # type: ignore[arg-type]

    bad = {
        "unknown area": request("a", therapeutic_areas=["astrology"]),
        "no area": request("b", therapeutic_areas=[]),
        "capacity of zero": request("c", max_concurrent_cases=0),
        "sub-specialty of another area": request("d", sub_specialties=["breast"]),
        "unknown sub-specialty": request("e", sub_specialties=["palmistry"]),
        "malformed language": request("f", languages=["French!"]),
        "malformed RPPS": request("g", rpps_number="123"),
    }
    for case, message in bad.items():
        details = await expect_status(ops.RegisterReferentDoctor(message), grpc.StatusCode.INVALID_ARGUMENT)
        assert details, case
    # Patients and other services may not register doctors; coordinators may.
    patient = matching.person("patient-1", Role.PATIENT)
    await expect_status(patient.RegisterReferentDoctor(request("h")), grpc.StatusCode.PERMISSION_DENIED)
    await expect_status(
        matching.service("gateway").RegisterReferentDoctor(request("i")), grpc.StatusCode.PERMISSION_DENIED
    )
    coordinator = matching.person("coord-1", Role.COORDINATOR)
    created = await coordinator.RegisterReferentDoctor(request("j"))
    assert created.doctor.therapeutic_areas == ["cardiology"]
    await expect_status(
        patient.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id="missing")), grpc.StatusCode.NOT_FOUND
    )
    got = await patient.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=doctor.doctor_id))
    assert got.doctor == doctor


@pytest.mark.req("DOC-01")
async def test_staff_update_doctors_and_take_them_out_of_matching(matching: Matching) -> None:
    doctor = await matching.register(1, ["oncology"], capacity=3, sub_specialties=["breast"])
    await matching.register(2, ["oncology"], capacity=3, languages=["en"])
    admin = matching.admin
    matching.clock.advance(DAY)

    def change(key: str, paths: list[str], **fields: object) -> pb.UpdateReferentDoctorRequest:
        return pb.UpdateReferentDoctorRequest(
            idempotency_key=key,
            doctor_id=doctor.doctor_id,
            doctor=pb.ReferentDoctor(**fields),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=paths),
        )

    updated = (
        await admin.UpdateReferentDoctor(
            change(
                "u-1",
                ["therapeutic_areas", "languages", "max_concurrent_cases", "sub_specialties"],
                therapeutic_areas=["oncology", "cardiology"],
                languages=["fr", "de"],
                max_concurrent_cases=5,
                sub_specialties=["breast", "rhythmology"],
                display_name="ignored: not in the mask",
            )
        )
    ).doctor
    assert updated.therapeutic_areas == ["cardiology", "oncology"]
    assert updated.languages == ["de", "fr"]
    assert updated.sub_specialties == ["breast", "rhythmology"]
    assert updated.max_concurrent_cases == 5 and updated.display_name == "Dr 001"
    assert updated.updated_at.ToDatetime() > updated.created_at.ToDatetime()
    # Dropping an area whose sub-specialty stays, a zero capacity, unknown or empty masks.
    bad_changes: list[tuple[str, list[str], dict[str, Any]]] = [
        ("u-2", ["therapeutic_areas"], {"therapeutic_areas": ["cardiology"]}),
        ("u-3", ["max_concurrent_cases"], {"max_concurrent_cases": 0}),
        ("u-4", ["rpps_number"], {"rpps_number": "99999999999"}),
        ("u-5", [], {}),
        ("u-6", ["therapeutic_areas"], {"therapeutic_areas": ["astrology"]}),
    ]
    for key, paths, fields in bad_changes:
        await expect_status(
            admin.UpdateReferentDoctor(change(key, paths, **fields)), grpc.StatusCode.INVALID_ARGUMENT
        )
    await expect_status(
        matching.doctor("account-1").UpdateReferentDoctor(change("u-7", ["display_name"], display_name="Me")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    unknown = change("u-8", ["display_name"], display_name="X")
    unknown.doctor_id = "missing"
    await expect_status(admin.UpdateReferentDoctor(unknown), grpc.StatusCode.NOT_FOUND)

    patient = matching.person("patient-1", Role.PATIENT)
    listed = await patient.ListReferentDoctors(pb.ListReferentDoctorsRequest(therapeutic_area="oncology"))
    assert [d.display_name for d in listed.doctors] == ["Dr 001", "Dr 002"]
    by_language = await patient.ListReferentDoctors(pb.ListReferentDoctorsRequest(language="en"))
    assert [d.display_name for d in by_language.doctors] == ["Dr 002"]
    out = await admin.SetReferentDoctorActive(
        pb.SetReferentDoctorActiveRequest(idempotency_key="off-1", doctor_id=doctor.doctor_id, active=False)
    )
    assert not out.doctor.active
    listed = await patient.ListReferentDoctors(pb.ListReferentDoctorsRequest(therapeutic_area="oncology"))
    assert [d.display_name for d in listed.doctors] == ["Dr 002"]
    await expect_status(
        patient.ListReferentDoctors(pb.ListReferentDoctorsRequest(include_inactive=True)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    everyone = await admin.ListReferentDoctors(pb.ListReferentDoctorsRequest(include_inactive=True))
    assert len(everyone.doctors) == 2
    await expect_status(
        admin.ListReferentDoctors(pb.ListReferentDoctorsRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.req("DOC-01")
async def test_registry_pages_by_display_name(matching: Matching) -> None:
    for index in (5, 3, 1, 4, 2):
        await matching.register(index, ["neurology"])
    worker = matching.worker
    names: list[str] = []
    token = ""
    while True:
        page = await worker.ListReferentDoctors(
            pb.ListReferentDoctorsRequest(therapeutic_area="neurology", page_size=2, page_token=token)
        )
        assert len(page.doctors) <= 2
        names += [d.display_name for d in page.doctors]
        token = page.next_page_token
        if not token:
            break
    assert names == ["Dr 001", "Dr 002", "Dr 003", "Dr 004", "Dr 005"]


@pytest.mark.req("DOC-01")
@pytest.mark.req("CASE-01")
async def test_therapeutic_areas_come_from_the_dossier_catalog(matching: Matching) -> None:
    response = await matching.person("patient-1", Role.PATIENT).ListTherapeuticAreas(
        pb.ListTherapeuticAreasRequest()
    )
    assert {area.code for area in response.areas} == therapeutic_area_codes()
    assert response.catalog_version == "1"
    oncology = next(area for area in response.areas if area.code == "oncology")
    assert oncology.label_fr == "Cancérologie" and oncology.label_en == "Oncology"
    assert "breast" in [sub.code for sub in oncology.sub_specialties]
    assert all(sub.label_en for sub in oncology.sub_specialties)


@pytest.mark.req("CASE-10")
async def test_doctors_record_their_own_absences(matching: Matching) -> None:
    first = await matching.register(1, ["cardiology"])
    second = await matching.register(2, ["cardiology"])
    now = matching.clock.now
    own = matching.doctor("account-1")

    def leave(key: str, doctor_id: str, start: timedelta, end: timedelta) -> pb.RecordAbsenceRequest:
        request = pb.RecordAbsenceRequest(idempotency_key=key, doctor_id=doctor_id)
        request.starts_at.FromDatetime(now + start)
        request.ends_at.FromDatetime(now + end)
        return request

    recorded = (await own.RecordAbsence(leave("l-1", first.doctor_id, 2 * DAY, 9 * DAY))).absence
    assert recorded.ends_at.ToDatetime() - recorded.starts_at.ToDatetime() == 7 * DAY
    # Another doctor's calendar is not theirs to see or change; patients have no say.
    await expect_status(
        own.RecordAbsence(leave("l-2", second.doctor_id, DAY, 2 * DAY)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        own.ListAbsences(pb.ListAbsencesRequest(doctor_id=second.doctor_id)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        matching.person("p", Role.PATIENT).RecordAbsence(leave("l-3", first.doctor_id, DAY, 2 * DAY)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    for key, start, end in [("l-4", 3 * DAY, 2 * DAY), ("l-5", -3 * DAY, -DAY), ("l-6", DAY, 400 * DAY)]:
        await expect_status(
            own.RecordAbsence(leave(key, first.doctor_id, start, end)), grpc.StatusCode.INVALID_ARGUMENT
        )
    await expect_status(
        matching.admin.RecordAbsence(leave("l-7", "missing", DAY, 2 * DAY)), grpc.StatusCode.NOT_FOUND
    )
    staff_recorded = (
        await matching.admin.RecordAbsence(leave("l-8", first.doctor_id, 20 * DAY, 21 * DAY))
    ).absence
    listed = await own.ListAbsences(pb.ListAbsencesRequest(doctor_id=first.doctor_id))
    assert [a.absence_id for a in listed.absences] == [recorded.absence_id, staff_recorded.absence_id]
    cancelled = await own.CancelAbsence(
        pb.CancelAbsenceRequest(idempotency_key="c-1", absence_id=staff_recorded.absence_id)
    )
    assert cancelled.cancelled_at.ToDatetime() == now.replace(tzinfo=None)
    await expect_status(
        own.CancelAbsence(
            pb.CancelAbsenceRequest(idempotency_key="c-2", absence_id=staff_recorded.absence_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await matching.worker.ListAbsences(pb.ListAbsencesRequest(doctor_id=first.doctor_id))
    assert [a.absence_id for a in listed.absences] == [recorded.absence_id]
