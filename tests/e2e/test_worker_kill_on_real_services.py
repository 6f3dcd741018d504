"""Kill the real case worker in the middle of a case on the real services (SIGKILL right
after a side effect reached a service and before Temporal heard of it, and once while
the case waits), restart it: the case closes with exactly one order, one offer, one
assignment and one email of each kind, as the services' own stores show them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from secondopinion.billing.v1 import billing_pb2
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.matching.v1 import matching_pb2
from secondopinion.notifications.v1 import notifications_pb2 as N
from temporalio.client import Client

from tests.e2e.conftest import eventually, queue_name, seeded_world, view_when
from tests.support.stack import Stack, platform_stack
from workflows.case.models import (
    ApplyCoverageCode,
    CasePolicy,
    CaseStatus,
    CaseWorkflowInput,
    Phase,
    SubmitReport,
)
from workflows.case.starter import start_case_workflow
from workflows.case.workflow import CaseWorkflow
from workflows.settings import TemporalSettings
from workflows.temporal_client import with_data_converter

REPO = Path(__file__).resolve().parents[2]
CRASH_POINTS = "create_order,notify:doctor_new_offer,record_assignment,notify:report_available"


class WorkerProcess:
    """The case worker in a separate process, pointed at the stack's services."""

    def __init__(self, stack: Stack, temporal: TemporalSettings, workdir: Path) -> None:
        self.stack, self.temporal, self.workdir = stack, temporal, workdir
        self.markers = workdir / "markers"
        self.markers.mkdir()
        self.current: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self, crash_after: str = "") -> None:
        self.started += 1
        log = (self.workdir / f"worker-{self.started}.log").open("wb")
        targets = [arg for service in ("identity", "dossier", "matching", "billing", "notifications")
                   for arg in (f"--{service}", self.stack.target(service))]  # fmt: skip
        self.current = subprocess.Popen(
            [
                sys.executable, "-m", "tests.e2e.crash_worker",
                "--address", self.temporal.address,
                "--namespace", self.temporal.namespace,
                "--queue", self.temporal.case_task_queue,
                "--payload-keys-dir", str(self.temporal.payload_keys_dir),
                "--auth-keys-dir", str(self.stack.auth.keys_dir),
                "--markers", str(self.markers),
                "--crash-after", crash_after,
                *targets,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def killed_itself(self, point: str, limit: float = 60.0) -> None:
        assert self.current is not None
        deadline = time.monotonic() + limit
        while self.current.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not crash after {point}")
            await asyncio.sleep(0.05)
        assert self.current.returncode == -signal.SIGKILL
        assert (self.markers / point.replace(":", "_")).exists()

    def kill(self) -> None:
        assert self.current is not None
        os.kill(self.current.pid, signal.SIGKILL)
        self.current.wait()

    def stop(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.kill()


@pytest.mark.temporal
@pytest.mark.req("CASE-09")
@pytest.mark.req("CASE-11")
async def test_a_killed_worker_finishes_the_case_with_every_effect_once_on_the_real_services(
    tmp_path: Path, temporal_client: Client, smtp_catcher: Path
) -> None:
    async with platform_stack(tmp_path, "sqlite", with_gateway=False) as stack, seeded_world(stack) as world:
        temporal = TemporalSettings(
            address=temporal_client.service_client.config.target_host,
            namespace=temporal_client.namespace,
            case_task_queue=queue_name("e2e-kill"),
            payload_keys_dir=tmp_path / "keys" / "temporal-payload",
        )
        client = with_data_converter(temporal_client, temporal)  # creates the payload key
        doctor = await world.referent_doctor("Sophie", "1000000003")
        patient = await world.patient_signs_up("jeanne")
        code = await world.coverage_code()
        case = await world.create_case(patient)
        case_id = case.case_id
        await world.submit_forms(patient, case_id)

        workers = WorkerProcess(stack, temporal, tmp_path)
        try:
            workers.start(CRASH_POINTS)
            handle = await start_case_workflow(
                client,
                CaseWorkflowInput(
                    case_id=case_id,
                    therapeutic_area="oncology",
                    doctor_choice_mode="platform_chosen",
                    # Short start-to-close: an activity lost with its worker is retried soon.
                    policy=CasePolicy(activity_timeout_seconds=4),
                ),
                temporal.case_task_queue,
            )
            # Crash 1: right after billing created the order.
            await workers.killed_itself("create_order")
            workers.start(CRASH_POINTS)
            await view_when(handle, lambda v: v.phase is Phase.PAYMENT and bool(v.order_id))
            await handle.execute_update(CaseWorkflow.apply_coverage_code, ApplyCoverageCode(code=code))
            # Crash 2: right after the doctor was emailed the offer.
            await workers.killed_itself("notify:doctor_new_offer")
            workers.start(CRASH_POINTS)
            await world.doctor_accepts(doctor, handle, case_id)
            # Crash 3: right after the dossier recorded the assignment.
            await workers.killed_itself("record_assignment")
            workers.start(CRASH_POINTS)
            await view_when(handle, lambda v: v.status is CaseStatus.IN_REVIEW)
            # Crash 4: killed by us while the case waits for the report.
            workers.kill()
            workers.start(CRASH_POINTS)
            report_id = await world.doctor_writes_report(doctor, case_id)
            submitted = asyncio.create_task(
                handle.execute_update(
                    CaseWorkflow.submit_report,
                    SubmitReport(doctor_account_id=doctor.account_id, report_id=report_id),
                )
            )
            # Crash 5: inside the update, right after the report-available email.
            await workers.killed_itself("notify:report_available")
            workers.start()
            assert (await asyncio.wait_for(submitted, timeout=60)).report_id == report_id
            result = await asyncio.wait_for(handle.result(), timeout=60)
        finally:
            workers.stop()
        assert result.status == "closed" and result.report_ids == [report_id]

        # Billing: one order, covered; one set of invoices (doctor under mandate + platform).
        billing = world.billing(world.worker)
        order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))).order
        assert order.status == billing_pb2.ORDER_STATUS_COVERED
        invoices = (
            await billing.ListInvoices(billing_pb2.ListInvoicesRequest(order_id=order.order_id))
        ).invoices
        assert sorted(i.issuer_kind for i in invoices) == [
            billing_pb2.ISSUER_KIND_DOCTOR_UNDER_MANDATE,
            billing_pb2.ISSUER_KIND_PLATFORM,
        ]
        # Matching: one offer, one assignment (released as completed).
        matching = world.matching(world.worker)
        offers = (await matching.ListOffers(matching_pb2.ListOffersRequest(case_id=case_id))).offers
        assert [o.status for o in offers] == [matching_pb2.OFFER_STATUS_ACCEPTED]
        assignments = (
            await matching.ListAssignments(
                matching_pb2.ListAssignmentsRequest(case_id=case_id, include_released=True)
            )
        ).assignments
        assert [a.release_reason for a in assignments] == [matching_pb2.RELEASE_REASON_COMPLETED]
        # Dossier: closed, one access, ended; one sealed report.
        dossier = world.dossier(world.worker)
        assert (await dossier.GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))).case.status == (
            dossier_pb2.CASE_STATUS_CLOSED
        )
        access = (
            await dossier.ListCaseAssignments(dossier_pb2.ListCaseAssignmentsRequest(case_id=case_id))
        ).assignments
        assert [a.end_reason for a in access] == [dossier_pb2.ASSIGNMENT_END_REASON_COMPLETED]

        # Notifications: one email of each kind, each delivered.
        expected = {
            (doctor.email, N.NOTIFICATION_TEMPLATE_DOCTOR_NEW_OFFER),
            (patient.email, N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE),
            (patient.email, N.NOTIFICATION_TEMPLATE_SATISFACTION_SURVEY),
        }

        async def all_sent() -> Counter[tuple[str, Any]] | None:
            sent = Counter(
                (m.recipient, m.template)
                for m in await world.outbox()
                if m.recipient in (doctor.email, patient.email)
            )
            return sent if set(sent) >= expected else None

        sent = await eventually(all_sent, "every email of the case delivered")
        assert set(sent) == expected and set(sent.values()) == {1}, sent
