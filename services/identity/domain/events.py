"""The authentication log (SEC-01): who, what, when, where from; never a secret."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.models import AuthenticationEvent
from services.shared.db import utcnow

log = logging.getLogger("services.identity.auth")
MAX_USER_AGENT = 512
MAX_IP = 64


class EventKind(StrEnum):
    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    CODE_SENT = "code_sent"
    CODE_FAILED = "code_failed"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_UNLOCKED = "account_unlocked"
    STEP_UP_SUCCEEDED = "step_up_succeeded"
    STEP_UP_FAILED = "step_up_failed"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 (an event name)
    CREDENTIALS_DECLARED_LOST = "credentials_declared_lost"
    PROVISIONAL_CREDENTIALS_ISSUED = "provisional_credentials_issued"
    BREACH_FLAGGED = "breach_flagged"
    SESSION_ENDED = "session_ended"
    ACCOUNT_CLOSED = "account_closed"
    TOTP_ENROLLED = "totp_enrolled"
    RECOVERY_CODE_USED = "recovery_code_used"
    CONTACT_DETAILS_CHANGED = "contact_details_changed"
    SECOND_FACTOR_RESET = "second_factor_reset"
    # The number on file replaced by the DPO or an administrator (a lost or stolen phone);
    # the event's session is the staff member's.
    PHONE_REPLACED_BY_STAFF = "phone_replaced_by_staff"


@dataclass(frozen=True, slots=True)
class Client:
    """Where a request came from, as the gateway saw it (kept 1 year, RET-04)."""

    ip_address: str = ""
    user_agent: str = ""

    @classmethod
    def of(cls, ip_address: str, user_agent: str) -> Client:
        return cls(ip_address.strip()[:MAX_IP], user_agent.strip()[:MAX_USER_AGENT])


NO_CLIENT = Client()


def record_event(
    session: AsyncSession,
    kind: EventKind,
    account_id: str | None,
    client: Client = NO_CLIENT,
    session_id: str | None = "",
) -> None:
    """Added to the caller's transaction: the event commits with what it describes."""
    session.add(
        AuthenticationEvent(
            event_id=str(uuid.uuid4()),
            account_id=account_id or "",
            kind=kind.value,
            occurred_at=utcnow(),
            session_id=session_id or "",
            ip_address=client.ip_address,
            user_agent=client.user_agent,
        )
    )
    log.info("auth event", extra={"fields": {"kind": kind.value, "account_id": account_id or ""}})
