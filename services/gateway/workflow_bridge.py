"""What the gateway tells the case workflow (signals, updates). The services hold the
records; the workflow drives the case. Without a Temporal connection (tests of the pages
alone) these are no-ops and the caller is told so."""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from services.gateway.clients import ServiceClients
from workflows.case.models import CaseWorkflowInput, case_workflow_id
from workflows.case.starter import start_case_workflow

log = logging.getLogger(__name__)


class WorkflowRefused(Exception):
    """The workflow's update validator refused the request (message shown to the person)."""


async def start(clients: ServiceClients, case_id: str, therapeutic_area: str, choice_mode: str) -> bool:
    if clients.temporal is None:
        return False
    await start_case_workflow(
        clients.temporal,
        CaseWorkflowInput(case_id=case_id, therapeutic_area=therapeutic_area, doctor_choice_mode=choice_mode),
        clients.temporal_task_queue,
    )
    return True


async def signal(clients: ServiceClients, case_id: str, name: str, payload: Any = None) -> bool:
    """Best effort: the record is already in the service; the workflow re-reads it."""
    if clients.temporal is None:
        return False
    handle = clients.temporal.get_workflow_handle(case_workflow_id(case_id))
    try:
        if payload is None:
            await handle.signal(name)
        else:
            await handle.signal(name, payload)
    except RPCError as error:
        log.warning(
            "workflow signal failed",
            extra={"fields": {"case_id": case_id, "signal": name, "status": str(error.status)}},
        )
        return False
    return True


async def update(clients: ServiceClients, case_id: str, name: str, payload: Any, result_type: type) -> Any:
    """An update the workflow validates; None when no workflow is reachable."""
    if clients.temporal is None:
        return None
    handle = clients.temporal.get_workflow_handle(case_workflow_id(case_id))
    try:
        return await handle.execute_update(name, payload, result_type=result_type)
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        raise WorkflowRefused(str(getattr(cause, "message", "") or cause or error)) from error
    except RPCError as error:
        log.warning(
            "workflow update failed",
            extra={"fields": {"case_id": case_id, "update": name, "status": str(error.status)}},
        )
        return None


async def query_state(clients: ServiceClients, case_id: str) -> Any:
    if clients.temporal is None:
        return None
    try:
        return await clients.temporal.get_workflow_handle(case_workflow_id(case_id)).query("state")
    except RPCError:
        return None
    except Exception:  # a query the worker cannot answer right now (no worker, replay issue)
        log.warning("workflow query failed", extra={"fields": {"case_id": case_id}})
        return None
