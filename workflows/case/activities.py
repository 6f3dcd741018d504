"""Activities of the case workflow: calls to the services over gRPC.

Each call carries the worker's service identity (minted per process, short-lived), a
deadline shorter than the activity timeout, and, when it changes something, an
idempotency key derived from the workflow so a retry never does it twice.
"""

from __future__ import annotations

import grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from temporalio import activity

from workflows.case.models import ListCandidatesInput, ListCandidatesResult, ReportCaseStatusInput
from workflows.grpc_errors import as_activity_error


class CaseActivities:
    def __init__(self, dossier: grpc.aio.Channel, matching: grpc.aio.Channel, call_timeout: float) -> None:
        self._dossier = dossier_pb2_grpc.DossierServiceStub(dossier)
        self._matching = matching_pb2_grpc.MatchingServiceStub(matching)
        self._timeout = call_timeout

    @activity.defn
    async def list_candidate_doctors(self, data: ListCandidatesInput) -> ListCandidatesResult:
        doctor_ids: list[str] = []
        page_token = ""
        try:
            while True:
                response = await self._matching.ListReferentDoctors(
                    matching_pb2.ListReferentDoctorsRequest(
                        therapeutic_area=data.therapeutic_area, page_size=100, page_token=page_token
                    ),
                    timeout=self._timeout,
                )
                doctor_ids += [doctor.doctor_id for doctor in response.doctors]
                page_token = response.next_page_token
                if not page_token:
                    return ListCandidatesResult(doctor_ids=doctor_ids)
        except grpc.aio.AioRpcError as error:
            raise as_activity_error(error) from error

    @activity.defn
    async def report_case_status(self, data: ReportCaseStatusInput) -> None:
        status = dossier_pb2.CaseStatus.Value("CASE_STATUS_" + data.status.upper())
        try:
            await self._dossier.UpdateCaseStatus(
                dossier_pb2.UpdateCaseStatusRequest(
                    idempotency_key=data.idempotency_key, case_id=data.case_id, status=status
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise as_activity_error(error) from error
