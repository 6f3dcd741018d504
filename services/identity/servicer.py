"""Thin gRPC layer: check who calls, translate messages, call the domain."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message as ProtoMessage
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity.domain import credentials, evidence, habilitations, login, people
from services.identity.domain.accounts import (
    STAFF_CLOSURE_REASONS,
    AccountRegistry,
    AccountStatus,
    ClosureReason,
    NewPatient,
    NewStaffMember,
    close_account,
    find_by_email,
    get_account,
    mask_phone_for_display,
    needs_totp,
    sign_up_attempt_notice,
    unlock_account,
    update_locale,
)
from services.identity.domain.contact import (
    EMAIL_TAKEN,
    confirm_email_change,
    confirm_phone_change,
    refuse_contact_update,
    start_email_change,
    start_phone_change,
)
from services.identity.domain.context import Deps
from services.identity.domain.events import NO_CLIENT, Client, EventKind
from services.identity.domain.evidence import AuthContext, ConsentKind, ObjectionKind, TextKind
from services.identity.domain.factors import FactorKind, active_totp
from services.identity.domain.lifecycle import SubjectKeys
from services.identity.domain.notifier import Message
from services.identity.domain.sessions import (
    SessionPolicy,
    current_session,
    end_all_sessions,
    end_session,
    list_open_sessions,
    validate_session,
)
from services.identity.lifecycle_servicer import LifecycleRpcs
from services.identity.models import (
    Account,
    AuthenticationEvent,
    Beneficiary,
    Challenge,
    EvidenceRecord,
    IdempotencyRecord,
    LegalText,
    Prospect,
    ResetLink,
    TotpFactor,
    UserSession,
)
from services.shared.auth import HUMAN_ROLES, Habilitation, Principal, Role, TokenSigner
from services.shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
)
from services.shared.idempotency import check_key, request_fingerprint, run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

T = TypeVar("T")
M = TypeVar("M", bound=ProtoMessage)
# Staff who may read any account's contact details for their task.
ACCOUNT_READERS = (Role.COORDINATOR, Role.DPO, Role.ADMINISTRATOR, Role.SERVICE)
SUPPORT_STAFF = (Role.COORDINATOR, Role.DPO, Role.ADMINISTRATOR)
PUBLIC_CALLERS = frozenset({"gateway"})
MAX_PAGE = 200
MAX_RECIPIENT_PAGE = 500


def ts(value: datetime | None) -> Any:
    return to_timestamp(value) if value is not None else None


def client_of(message: Any) -> Client:
    return Client.of(message.ip_address, message.user_agent)


def page(size: int, token: str) -> tuple[int, int]:
    if size < 0:
        raise InvalidArgument("page_size must not be negative")
    try:
        offset = int(token) if token else 0
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid") from exc
    if offset < 0:
        raise InvalidArgument("page_token is not valid")
    return offset, min(size or 50, MAX_PAGE)


def next_token(offset: int, limit: int, got: int) -> str:
    return str(offset + limit) if got == limit else ""


def habilitations_pb(held: frozenset[Habilitation]) -> list[Any]:
    return sorted(to_pb_enum(pb.Habilitation, h) for h in held)


def account_to_pb(
    account: Account, totp_enrolled: bool = False, held: frozenset[Habilitation] = frozenset()
) -> pb.Account:
    message = pb.Account(
        account_id=account.account_id,
        role=to_pb_enum(pb.AccountRole, Role(account.role)),
        email=account.email,
        phone_number=account.phone_number,
        display_name=account.display_name,
        status=to_pb_enum(pb.AccountStatus, AccountStatus(account.status)),
        created_at=to_timestamp(account.created_at),
        locale=account.locale,
        rpps_number=account.rpps_number or "",
        partner_id=account.partner_id,
        totp_enrolled=totp_enrolled,
        must_change_password=account.must_change_password,
        habilitations=habilitations_pb(held),
    )
    if account.closed_at is not None:
        message.closed_at.CopyFrom(to_timestamp(account.closed_at))
    if account.closure_reason:
        message.closure_reason = to_pb_enum(pb.ClosureReason, ClosureReason(account.closure_reason))
    if account.last_activity_at is not None:
        message.last_activity_at.CopyFrom(to_timestamp(account.last_activity_at))
    return message


def factor_pb(kind: FactorKind) -> Any:
    return to_pb_enum(pb.SecondFactorKind, kind)


def text_to_pb(text: LegalText, with_body: bool) -> pb.LegalText:
    return pb.LegalText(
        text_id=text.text_id,
        kind=pb.LegalTextKind.Value(f"LEGAL_TEXT_KIND_{text.kind}"),
        version=text.version,
        locale=text.locale,
        sha256_hex=text.sha256_hex,
        body=text.body if with_body else "",
        published_at=to_timestamp(text.published_at),
        effective_at=to_timestamp(text.effective_at),
    )


def record_to_pb(record: EvidenceRecord) -> pb.EvidenceRecord:
    message = pb.EvidenceRecord(
        record_id=record.record_id,
        sequence=record.sequence,
        account_id=record.account_id,
        beneficiary_id=record.beneficiary_id,
        kind=pb.EvidenceKind.Value(f"EVIDENCE_KIND_{record.kind}"),
        text_id=record.text_id,
        text_version=record.text_version,
        text_sha256_hex=record.text_sha256_hex,
        recorded_at=to_timestamp(record.recorded_at),
        authentication_method=pb.AuthenticationMethod.Value(
            f"AUTHENTICATION_METHOD_{record.authentication_method}"
        ),
        session_id=record.session_id,
        ip_address=record.ip_address,
        user_agent=record.user_agent,
        previous_hash_hex=record.previous_hash_hex,
        record_hash_hex=record.record_hash_hex,
        recorded_by_account_id=record.recorded_by_account_id,
    )
    if record.text_kind:
        message.text_kind = pb.LegalTextKind.Value(f"LEGAL_TEXT_KIND_{record.text_kind}")
    if record.consent_kind:
        message.consent_kind = pb.ConsentKind.Value(f"CONSENT_KIND_{record.consent_kind}")
    if record.objection_kind:
        message.objection_kind = pb.ObjectionKind.Value(f"OBJECTION_KIND_{record.objection_kind}")
    if record.habilitation:
        message.habilitation = to_pb_enum(pb.Habilitation, Habilitation(record.habilitation))
    return message


def beneficiary_to_pb(b: Beneficiary) -> pb.Beneficiary:
    message = pb.Beneficiary(
        beneficiary_id=b.beneficiary_id,
        representative_account_id=b.representative_account_id,
        kind=pb.BeneficiaryKind.Value(f"BENEFICIARY_KIND_{b.kind.upper()}"),
        first_name=b.first_name,
        last_name=b.last_name,
        birth_date=b.birth_date,
        proof_document_id=b.proof_document_id,
        minor_consent_document_id=b.minor_consent_document_id,
        status=pb.RepresentationStatus.Value(f"REPRESENTATION_STATUS_{b.status.upper()}"),
        created_at=to_timestamp(b.created_at),
        beneficiary_account_id=b.beneficiary_account_id,
    )
    if b.minor_consent_mode:
        message.minor_consent_mode = pb.MinorConsentMode.Value(f"MINOR_CONSENT_MODE_{b.minor_consent_mode}")
    if b.valid_until is not None:
        message.valid_until.CopyFrom(to_timestamp(b.valid_until))
    if b.ended_at is not None:
        message.ended_at.CopyFrom(to_timestamp(b.ended_at))
    return message


def prospect_to_pb(p: Prospect) -> pb.Prospect:
    return pb.Prospect(
        prospect_id=p.prospect_id,
        referring_account_id=p.referring_account_id,
        first_name=p.first_name,
        last_name=p.last_name,
        email=p.email,
        phone_number=p.phone_number,
        status=pb.ProspectStatus.Value(f"PROSPECT_STATUS_{p.status.upper()}"),
        created_at=to_timestamp(p.created_at),
        last_invitation_sent_at=to_timestamp(p.last_invitation_sent_at),
    )


def required(value: T | None, field: str) -> T:
    if value is None:
        raise InvalidArgument(f"{field} is required")
    return value


class IdentityServicer(LifecycleRpcs, pb_grpc.IdentityServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: AccountRegistry,
        signer: TokenSigner,
        session_policy: SessionPolicy,
        deps: Deps,
        token_keys: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._signer = signer
        # (key id, raw Ed25519 public key) of every trusted issuer, identity's first.
        self._token_keys = token_keys
        self._session_policy = session_policy
        self._deps = deps
        self._subject_keys = SubjectKeys(deps.keys.subject_kek)

    # ------------------------------------------------------------ plumbing

    async def _commit_then_raise(self, action: Callable[[AsyncSession], Awaitable[T | ServiceError]]) -> T:
        """Refusals that must leave a trace (counters, the log) commit before they raise."""
        async with self._sessions.begin() as session:
            outcome = await action(session)
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    async def _once(
        self,
        request: ProtoMessage,
        operation: str,
        action: Callable[[AsyncSession], Awaitable[str]],
        secrets: tuple[str, ...] = (),
    ) -> str:
        """run_once; secret fields are replaced by a keyed digest before fingerprinting."""
        fingerprinted = request
        if secrets:
            fingerprinted = type(request)()
            fingerprinted.CopyFrom(request)
            for name in secrets:
                setattr(fingerprinted, name, self._deps.keys.redact(getattr(request, name)))
        result, _ = await run_once(self._sessions, IdempotencyRecord, fingerprinted, operation, action)
        return result

    def _person(self) -> Principal:
        return require_role(*HUMAN_ROLES)

    async def _auth_context(self, session: AsyncSession, principal: Principal, client: Client) -> AuthContext:
        record = await current_session(session, principal.subject, principal.session_id, self._session_policy)
        method = record.authentication_method or "PASSWORD_AND_SMS_CODE"
        return AuthContext(method=method, session_id=record.session_id, client=client)

    def _self_or_staff(self, account_id: str, staff: tuple[Role, ...] = SUPPORT_STAFF) -> Principal:
        principal = require_role(*Role)
        if principal.subject == account_id and not principal.is_service:
            return principal
        if principal.role in staff:
            return principal
        if principal.is_service:
            raise PermissionDenied("this operation is not allowed for this service")
        # Another person's account: do not reveal whether it exists.
        raise NotFound("account not found")

    async def _account_pb(self, session: AsyncSession, account: Account) -> pb.Account:
        return account_to_pb(
            account,
            await active_totp(session, account.account_id) is not None,
            await habilitations.active(session, account.account_id),
        )

    async def _grantor_context(self, session: AsyncSession, principal: Principal) -> AuthContext:
        """Who grants or revokes a habilitation, as the evidence record states it."""
        if principal.is_service:
            return AuthContext(method="SERVICE", recorded_by_account_id=principal.subject)
        auth = await self._auth_context(session, principal, NO_CLIENT)
        return AuthContext(
            auth.method, auth.session_id, auth.client, recorded_by_account_id=principal.subject
        )

    def _habilitation(self, value: int) -> Habilitation:
        return required(from_pb_enum(pb.Habilitation, Habilitation, value), "habilitation")

    # ------------------------------------------------------------ accounts

    async def SignUp(self, request: pb.SignUpRequest, context: Any) -> pb.SignUpResponse:
        # People sign up through the gateway, which calls with its own service identity.
        require_role(Role.SERVICE, services=frozenset({"gateway", "ops"}))
        new = NewPatient(
            email=request.email,
            phone_number=request.phone_number,
            password=request.password,
            declared_age=request.declared_age,
            locale=request.locale,
        )
        client = client_of(request.client)
        notices: list[Message] = []

        async def create(session: AsyncSession) -> str:
            notices.clear()
            terms = await evidence.current_text(session, TextKind.TERMS, request.locale or "fr")
            if terms is not None:
                if request.accepted_terms_version != terms.version:
                    raise InvalidArgument(f"the terms in force (version {terms.version}) must be accepted")
                if request.accepted_terms_sha256_hex.lower() != terms.sha256_hex:
                    raise InvalidArgument("accepted_terms_sha256_hex does not match the terms in force")
            outcome = await self._registry.sign_up_patient(session, new)
            if not outcome.created:
                # No account enumeration: the same checks, the same Argon2 work and an
                # answer of the same shape (an id no account has; a retry with the key gets
                # it again), nothing created or changed; the owner is told by email.
                if request.referral_token:
                    await people.check_invitation(session, self._deps, request.referral_token)
                notice = sign_up_attempt_notice(outcome.account, self._deps.policy.public_base_url)
                if notice is not None:
                    notices.append(notice)
                return str(uuid.uuid4())
            account = outcome.account
            if request.referral_token:
                await people.redeem_invitation(
                    session, self._deps, request.referral_token, account.account_id
                )
            if terms is not None:
                auth = AuthContext(method="SIGN_UP", client=client)
                await evidence.append(
                    session, account.account_id, evidence.EvidenceKind.TEXT_ACCEPTED, auth, text=terms
                )
            return account.account_id

        secrets = ("password", "referral_token")
        try:
            account_id = await self._once(request, "SignUp", create, secrets=secrets)
        except Aborted:
            # Two sign-ups raced for one email and this one lost: answered as a known email.
            account_id = await self._once(request, "SignUp", create, secrets=secrets)
        for notice in notices:  # after the commit, off the answer's latency
            self._deps.courier.post(notice)
        return pb.SignUpResponse(account_id=account_id)

    async def CreateStaffAccount(
        self, request: pb.CreateStaffAccountRequest, context: Any
    ) -> pb.CreateStaffAccountResponse:
        principal = require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        role = from_pb_enum(pb.AccountRole, Role, request.role)
        if role is None:
            raise InvalidArgument("role is required")
        # SEC-05: habilitations asked for at creation are granted as GrantHabilitation would.
        granted = [self._habilitation(h) for h in request.habilitations]
        new = NewStaffMember(
            role=role,
            email=request.email,
            phone_number=request.phone_number,
            display_name=request.display_name,
            rpps_number=request.rpps_number,
            partner_id=request.partner_id,
        )

        async def create(session: AsyncSession) -> str:
            account = await self._registry.create_staff_member(session, new)
            if granted:
                auth = await self._grantor_context(session, principal)
                await habilitations.grant_all(
                    session,
                    account.account_id,
                    granted,
                    "granted at account creation",
                    principal.subject,
                    auth,
                )
            return account.account_id

        account_id = await self._once(request, "CreateStaffAccount", create)
        return pb.CreateStaffAccountResponse(account_id=account_id)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.GetAccountResponse:
        principal = require_role(*Role)
        if principal.subject != request.account_id and principal.role not in ACCOUNT_READERS:
            raise PermissionDenied("an account can only be read by its owner or habilitated staff")
        async with self._sessions() as session:
            account = await self._registry.get(session, request.account_id)
            return pb.GetAccountResponse(account=await self._account_pb(session, account))

    async def UpdatePreferences(
        self, request: pb.UpdatePreferencesRequest, context: Any
    ) -> pb.UpdatePreferencesResponse:
        principal = self._person()

        async def change(session: AsyncSession) -> str:
            return (await update_locale(session, principal.subject, request.locale)).account_id

        await self._once(request, "UpdatePreferences", change)
        async with self._sessions() as session:
            account = await get_account(session, principal.subject)
            return pb.UpdatePreferencesResponse(account=await self._account_pb(session, account))

    async def CloseAccount(self, request: pb.CloseAccountRequest, context: Any) -> pb.CloseAccountResponse:
        principal = self._self_or_staff(request.account_id, (Role.DPO, Role.ADMINISTRATOR))
        reason = from_pb_enum(pb.ClosureReason, ClosureReason, request.reason)
        by_self = principal.subject == request.account_id
        if by_self:
            reason = reason or ClosureReason.USER_REQUEST
            if reason is not ClosureReason.USER_REQUEST:
                raise InvalidArgument("a user closes their own account with the user_request reason")
        elif reason is None or reason not in STAFF_CLOSURE_REASONS:
            raise InvalidArgument("staff must give a closure reason")
        ended: dict[str, int] = {}

        async def close(session: AsyncSession) -> str:
            assert reason is not None
            account, count = await close_account(session, request.account_id, reason, principal.subject)
            ended["count"] = count
            return account.account_id

        await self._once(request, "CloseAccount", close)
        async with self._sessions() as session:
            account = await get_account(session, request.account_id)
            return pb.CloseAccountResponse(
                account=await self._account_pb(session, account), ended_session_count=ended.get("count", 0)
            )

    async def UnlockAccount(self, request: pb.UnlockAccountRequest, context: Any) -> pb.UnlockAccountResponse:
        require_role(*SUPPORT_STAFF)

        async def unlock(session: AsyncSession) -> str:
            return (await unlock_account(session, request.account_id)).account_id

        await self._once(request, "UnlockAccount", unlock)
        async with self._sessions() as session:
            account = await get_account(session, request.account_id)
            return pb.UnlockAccountResponse(account=await self._account_pb(session, account))

    async def UpdateContactDetails(
        self, request: pb.UpdateContactDetailsRequest, context: Any
    ) -> pb.UpdateContactDetailsResponse:
        """Deprecated: an email or a phone number changes through its start/confirm pair."""
        self._person()
        refuse_contact_update(request.email, request.phone_number)

    async def _once_committed(
        self,
        request: ProtoMessage,
        operation: str,
        account_id: str,
        action: Callable[[AsyncSession], Awaitable[str | ServiceError]],
        redacted: str,
    ) -> str:
        """run_once for commands whose refusals must leave a trace (a wrong code's counters
        and log, an attempt spent from the hourly budget): the refusal is committed, then
        raised; only a success records the key's result (run_once would roll back)."""
        key = check_key(getattr(request, "idempotency_key", ""))
        fingerprinted = type(request)()
        fingerprinted.CopyFrom(request)
        setattr(fingerprinted, redacted, self._deps.keys.redact(getattr(request, redacted)))
        fingerprint = request_fingerprint(fingerprinted)

        async def once(session: AsyncSession) -> str | ServiceError:
            # The account row first: a concurrent retry waits, then finds the record.
            await get_account(session, account_id, for_update=True)
            previous = await session.get(IdempotencyRecord, key)
            if previous is not None:
                if previous.operation != operation or previous.request_hash != fingerprint:
                    raise FailedPrecondition("idempotency_key was already used with different parameters")
                return previous.result_id
            outcome = await action(session)
            if isinstance(outcome, ServiceError):
                return outcome
            session.add(
                IdempotencyRecord(
                    idempotency_key=key,
                    operation=operation,
                    request_hash=fingerprint,
                    result_id=outcome,
                    created_at=datetime.now(UTC),
                )
            )
            return outcome

        return await self._commit_then_raise(once)

    async def StartEmailChange(
        self, request: pb.StartEmailChangeRequest, context: Any
    ) -> pb.StartEmailChangeResponse:
        principal = self._person()
        client = client_of(request.client)

        async def start(session: AsyncSession) -> str | ServiceError:
            pending = await start_email_change(
                session, self._deps, principal.subject, principal.session_id, request.email, client
            )
            return pending if isinstance(pending, ServiceError) else pending.change_id

        change_id = await self._once_committed(
            request, "StartEmailChange", principal.subject, start, redacted="email"
        )
        async with self._sessions() as session:
            challenge = await session.get(Challenge, change_id)
            assert challenge is not None
            assert challenge.pending_email is not None
            return pb.StartEmailChangeResponse(
                change_id=change_id,
                email=challenge.pending_email,
                code_expires_at=ts(challenge.code_expires_at),
            )

    async def ConfirmEmailChange(
        self, request: pb.ConfirmEmailChangeRequest, context: Any
    ) -> pb.ConfirmEmailChangeResponse:
        principal = self._person()
        client = client_of(request.client)

        async def confirm(session: AsyncSession) -> str | ServiceError:
            outcome = await confirm_email_change(
                session,
                self._deps,
                principal.subject,
                principal.session_id,
                request.change_id,
                request.code,
                client,
            )
            return outcome if isinstance(outcome, ServiceError) else outcome.account_id

        try:
            account_id = await self._once_committed(
                request, "ConfirmEmailChange", principal.subject, confirm, redacted="code"
            )
        except IntegrityError as exc:
            # Taken by a sign-up between the check and the write: nothing was changed.
            raise AlreadyExists(EMAIL_TAKEN) from exc
        async with self._sessions() as session:
            account = await get_account(session, account_id)
            return pb.ConfirmEmailChangeResponse(account=await self._account_pb(session, account))

    async def StartPhoneNumberChange(
        self, request: pb.StartPhoneNumberChangeRequest, context: Any
    ) -> pb.StartPhoneNumberChangeResponse:
        principal = self._person()
        client = client_of(request.client)

        async def start(session: AsyncSession) -> str:
            pending = await start_phone_change(
                session, self._deps, principal.subject, principal.session_id, request.phone_number, client
            )
            return pending.change_id

        change_id = await self._once(request, "StartPhoneNumberChange", start, secrets=("phone_number",))
        async with self._sessions() as session:
            challenge = await session.get(Challenge, change_id)
            assert challenge is not None
            assert challenge.pending_phone_number is not None
            return pb.StartPhoneNumberChangeResponse(
                change_id=change_id,
                masked_phone_number=mask_phone_for_display(challenge.pending_phone_number),
                code_expires_at=ts(challenge.code_expires_at),
            )

    async def ConfirmPhoneNumberChange(
        self, request: pb.ConfirmPhoneNumberChangeRequest, context: Any
    ) -> pb.ConfirmPhoneNumberChangeResponse:
        """Idempotent by its key, yet a wrong code is committed before it is refused (the
        counters and the log): run_once would roll it back, so the record is kept here."""
        principal = self._person()
        client = client_of(request.client)
        key = check_key(request.idempotency_key)
        operation = "ConfirmPhoneNumberChange"
        fingerprinted = pb.ConfirmPhoneNumberChangeRequest()
        fingerprinted.CopyFrom(request)
        fingerprinted.code = self._deps.keys.redact(request.code)
        fingerprint = request_fingerprint(fingerprinted)

        async def confirm(session: AsyncSession) -> str | ServiceError:
            # The account row first: a concurrent retry waits, then finds the record.
            await get_account(session, principal.subject, for_update=True)
            previous = await session.get(IdempotencyRecord, key)
            if previous is not None:
                if previous.operation != operation or previous.request_hash != fingerprint:
                    raise FailedPrecondition("idempotency_key was already used with different parameters")
                return previous.result_id
            outcome = await confirm_phone_change(
                session,
                self._deps,
                principal.subject,
                principal.session_id,
                request.change_id,
                request.code,
                client,
            )
            if isinstance(outcome, ServiceError):
                return outcome
            session.add(
                IdempotencyRecord(
                    idempotency_key=key,
                    operation=operation,
                    request_hash=fingerprint,
                    result_id=outcome.account_id,
                    created_at=datetime.now(UTC),
                )
            )
            return outcome.account_id

        account_id = await self._commit_then_raise(confirm)
        async with self._sessions() as session:
            account = await get_account(session, account_id)
            return pb.ConfirmPhoneNumberChangeResponse(account=await self._account_pb(session, account))

    # ------------------------------------------------------------ habilitations (SEC-05)

    async def GrantHabilitation(
        self, request: pb.GrantHabilitationRequest, context: Any
    ) -> pb.GrantHabilitationResponse:
        account = await self._change_habilitation(request, "GrantHabilitation", habilitations.grant)
        return pb.GrantHabilitationResponse(account=account)

    async def RevokeHabilitation(
        self, request: pb.RevokeHabilitationRequest, context: Any
    ) -> pb.RevokeHabilitationResponse:
        account = await self._change_habilitation(request, "RevokeHabilitation", habilitations.revoke)
        return pb.RevokeHabilitationResponse(account=account)

    async def _change_habilitation(
        self,
        request: pb.GrantHabilitationRequest | pb.RevokeHabilitationRequest,
        operation: str,
        change: Callable[..., Awaitable[Any]],
    ) -> pb.Account:
        """A grant or a revocation, once per idempotency key; the account as it now is."""
        principal = require_role(*habilitations.GRANTORS, services=habilitations.GRANTING_SERVICES)
        kind = self._habilitation(request.habilitation)

        async def run(session: AsyncSession) -> str:
            auth = await self._grantor_context(session, principal)
            await change(session, request.account_id, kind, request.reason, principal.subject, auth)
            return request.account_id

        await self._once(request, operation, run)
        async with self._sessions() as session:
            return await self._account_pb(session, await get_account(session, request.account_id))

    # ------------------------------------------------------------ login

    async def StartLogin(self, request: pb.StartLoginRequest, context: Any) -> pb.StartLoginResponse:
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)
        client = client_of(request.client)

        async def attempt(session: AsyncSession) -> str:
            outcome = await login.start_login(session, self._deps, request.email, request.password, client)
            # A refusal is stored as the key's result: a retry neither counts twice nor
            # sends a second SMS.
            if isinstance(outcome, ServiceError):
                return f"refused:{outcome.status.name}:{type(outcome).__name__}"
            return outcome

        result = await self._once(request, "StartLogin", attempt, secrets=("password",))
        if result.startswith("refused:"):
            async with self._sessions() as session:
                refusal = await self._login_refusal(session, request.email, result)
            raise refusal
        async with self._sessions() as session:
            view = await login.view_attempt(session, result)
        response = pb.StartLoginResponse(
            login_attempt_id=view.attempt_id,
            required_factors=[factor_pb(f) for f in view.remaining],
            masked_phone_number=view.masked_phone,
        )
        if view.code_expires_at is not None:
            response.code_expires_at.CopyFrom(to_timestamp(view.code_expires_at))
        return response

    async def _login_refusal(self, session: AsyncSession, email: str, result: str) -> ServiceError:
        if result.endswith(":PermissionDenied"):
            account = await find_by_email(session, email)
            if account is not None:
                return login.status_refusal(account)
        return Unauthenticated(login.WRONG_CREDENTIALS)

    async def VerifyLoginCode(
        self, request: pb.VerifyLoginCodeRequest, context: Any
    ) -> pb.VerifyLoginCodeResponse:
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)
        factor = required(from_pb_enum(pb.SecondFactorKind, FactorKind, request.factor), "factor")
        client = client_of(request.client)
        progress = await self._commit_then_raise(
            lambda s: login.verify_login_code(
                s, self._deps, request.login_attempt_id, factor, request.code, client
            )
        )
        response = pb.VerifyLoginCodeResponse(
            completed=progress.completed,
            remaining_factors=[factor_pb(f) for f in progress.remaining],
            must_change_password=progress.must_change_password,
            must_enrol_totp=progress.must_enrol_totp,
        )
        if progress.opened is not None:
            response.session_token = progress.opened.token
            response.session_id = progress.opened.session_id
        if progress.session_expires_at is not None:
            response.session_expires_at.CopyFrom(to_timestamp(progress.session_expires_at))
        return response

    async def ResendLoginCode(
        self, request: pb.ResendLoginCodeRequest, context: Any
    ) -> pb.ResendLoginCodeResponse:
        resent = await self._resend_code(request, "ResendLoginCode", request.login_attempt_id, login.LOGIN)
        return pb.ResendLoginCodeResponse(
            code_expires_at=to_timestamp(resent.code_expires_at),
            next_resend_allowed_at=to_timestamp(resent.next_resend_allowed_at),
        )

    async def ResendPasswordResetCode(
        self, request: pb.ResendPasswordResetCodeRequest, context: Any
    ) -> pb.ResendPasswordResetCodeResponse:
        resent = await self._resend_code(
            request, "ResendPasswordResetCode", request.password_reset_id, login.RESET
        )
        return pb.ResendPasswordResetCodeResponse(
            code_expires_at=to_timestamp(resent.code_expires_at),
            next_resend_allowed_at=to_timestamp(resent.next_resend_allowed_at),
        )

    async def _resend_code(self, request: Any, method: str, challenge_id: str, purpose: str) -> login.Resent:
        """A new SMS code for a login or a reset in progress (the portal's resend click)."""
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)
        times: dict[str, login.Resent] = {}

        async def resend(session: AsyncSession) -> str:
            times["r"] = await login.resend_code(session, self._deps, challenge_id, purpose)
            return challenge_id

        await self._once(request, method, resend)
        if "r" in times:
            return times["r"]
        # A retried click: the answer of the first one.
        async with self._sessions() as session:
            challenge = await login.open_challenge(session, challenge_id, purpose)
            assert challenge.code_expires_at is not None
            assert challenge.last_code_sent_at is not None
            return login.Resent(
                challenge.code_expires_at, challenge.last_code_sent_at + self._deps.policy.resend_interval
            )

    async def StartStepUp(self, request: pb.StartStepUpRequest, context: Any) -> pb.StartStepUpResponse:
        principal = self._person()
        purpose = (
            pb.StepUpPurpose.Name(request.purpose) if request.purpose in pb.StepUpPurpose.values() else ""
        )
        if not request.purpose or not purpose:
            raise InvalidArgument("purpose is required")

        async def start(session: AsyncSession) -> str:
            challenge = await login.start_step_up(
                session,
                self._deps,
                principal.subject,
                principal.session_id,
                purpose.removeprefix("STEP_UP_PURPOSE_"),
            )
            return challenge.challenge_id

        step_up_id = await self._once(request, "StartStepUp", start)
        async with self._sessions() as session:
            challenge = await session.get(Challenge, step_up_id)
            assert challenge is not None
            factor = login.remaining(challenge)[0] if challenge.remaining_factors else FactorKind.SMS_CODE
            return pb.StartStepUpResponse(
                step_up_id=step_up_id, factor=factor_pb(factor), code_expires_at=ts(challenge.code_expires_at)
            )

    async def VerifyStepUp(self, request: pb.VerifyStepUpRequest, context: Any) -> pb.VerifyStepUpResponse:
        principal = self._person()
        until = await self._commit_then_raise(
            lambda s: login.verify_step_up(
                s, self._deps, principal.subject, principal.session_id, request.step_up_id, request.code
            )
        )
        return pb.VerifyStepUpResponse(step_up_valid_until=to_timestamp(until))

    async def ValidateSession(
        self, request: pb.ValidateSessionRequest, context: Any
    ) -> pb.ValidateSessionResponse:
        require_role(Role.SERVICE, services=frozenset({"gateway"}))
        async with self._sessions.begin() as session:
            valid = await validate_session(session, request.session_token, self._session_policy)
            role = Role(valid.account.role)
            account = valid.account
            # Only staff enrol TOTP: a patient's page load skips the lookup.
            must_enrol_totp = needs_totp(account) and await active_totp(session, account.account_id) is None
            # SEC-05: the token carries the habilitations active now; a later change shows
            # in the next token (tokens live a few minutes).
            held = await habilitations.active(session, account.account_id, role)
        token, expires_at = self._signer.mint(account.account_id, role, valid.session_id, held)
        response = pb.ValidateSessionResponse(
            account_id=account.account_id,
            role=to_pb_enum(pb.AccountRole, role),
            session_id=valid.session_id,
            internal_token=token,
            internal_token_expires_at=to_timestamp(datetime.fromtimestamp(expires_at, UTC)),
            must_change_password=account.must_change_password,
            locale=account.locale,
            must_enrol_totp=must_enrol_totp,
            habilitations=habilitations_pb(held),
        )
        if valid.step_up_valid_until is not None:
            response.step_up_valid_until.CopyFrom(to_timestamp(valid.step_up_valid_until))
        return response

    async def ListTokenSigningKeys(
        self, request: pb.ListTokenSigningKeysRequest, context: Any
    ) -> pb.ListTokenSigningKeysResponse:
        # Public keys only: callable without a token (grpc_server.UNAUTHENTICATED_PREFIXES).
        return pb.ListTokenSigningKeysResponse(
            keys=[
                pb.TokenSigningKey(key_id=key_id, algorithm="Ed25519", public_key=raw)
                for key_id, raw in self._token_keys
            ]
        )

    # ------------------------------------------------------------ sessions

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any) -> pb.ListSessionsResponse:
        principal = self._person()
        async with self._sessions() as session:
            rows = await list_open_sessions(session, principal.subject, self._session_policy)
        return pb.ListSessionsResponse(
            sessions=[
                pb.Session(
                    session_id=row.session_id,
                    created_at=to_timestamp(row.created_at),
                    last_seen_at=to_timestamp(row.last_seen_at),
                    expires_at=to_timestamp(row.created_at + self._session_policy.absolute_timeout),
                    ip_address=row.ip_address,
                    user_agent=row.user_agent,
                    current=row.session_id == principal.session_id,
                )
                for row in rows
            ]
        )

    async def EndSession(self, request: pb.EndSessionRequest, context: Any) -> pb.EndSessionResponse:
        principal = self._person()

        async def end(session: AsyncSession) -> str:
            await end_session(session, principal.subject, request.session_id, "ended_by_user")
            return request.session_id

        await self._once(request, "EndSession", end)
        async with self._sessions() as session:
            record = await session.get(UserSession, request.session_id)
            assert record is not None
            assert record.ended_at is not None
            return pb.EndSessionResponse(ended_at=to_timestamp(record.ended_at))

    async def EndOtherSessions(
        self, request: pb.EndOtherSessionsRequest, context: Any
    ) -> pb.EndOtherSessionsResponse:
        principal = self._person()

        async def end(session: AsyncSession) -> str:
            await current_session(session, principal.subject, principal.session_id, self._session_policy)
            count = await end_all_sessions(session, principal.subject, "ended_by_user", principal.session_id)
            return str(count)

        count = await self._once(request, "EndOtherSessions", end)
        return pb.EndOtherSessionsResponse(ended_session_count=int(count))

    async def Logout(self, request: pb.LogoutRequest, context: Any) -> pb.LogoutResponse:
        principal = self._person()

        async def end(session: AsyncSession) -> str:
            await end_session(session, principal.subject, principal.session_id, "logout")
            return principal.session_id

        await self._once(request, "Logout", end)
        async with self._sessions() as session:
            record = await session.get(UserSession, principal.session_id)
            assert record is not None
            assert record.ended_at is not None
            return pb.LogoutResponse(ended_at=to_timestamp(record.ended_at))

    # ------------------------------------------------------------ credentials

    async def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: Any
    ) -> pb.ChangePasswordResponse:
        principal = self._person()
        client = client_of(request.client)
        outcome: dict[str, tuple[datetime, int]] = {}

        async def change(session: AsyncSession) -> str:
            result = await credentials.change_password(
                session,
                self._deps,
                principal.subject,
                principal.session_id,
                request.current_password,
                request.new_password,
                client,
            )
            if isinstance(result, ServiceError):
                return "refused"
            outcome["r"] = result
            return f"{result[0].isoformat()}|{result[1]}"

        result = await self._once(
            request, "ChangePassword", change, secrets=("current_password", "new_password")
        )
        if result == "refused":
            raise Unauthenticated("the current password is wrong")
        changed, _, count = result.partition("|")
        return pb.ChangePasswordResponse(
            changed_at=to_timestamp(datetime.fromisoformat(changed)), ended_session_count=int(count)
        )

    async def DeclareCredentialLoss(
        self, request: pb.DeclareCredentialLossRequest, context: Any
    ) -> pb.DeclareCredentialLossResponse:
        self._self_or_staff(request.account_id)
        if (
            request.kind == pb.CREDENTIAL_INCIDENT_KIND_UNSPECIFIED
            or request.kind not in pb.CredentialIncidentKind.values()
        ):
            raise InvalidArgument("kind (loss or theft) is required")
        client = client_of(request.client)

        async def declare(session: AsyncSession) -> str:
            blocked_at, count = await credentials.declare_credential_loss(session, request.account_id, client)
            return f"{blocked_at.isoformat()}|{count}"

        result = await self._once(request, "DeclareCredentialLoss", declare)
        blocked, _, count = result.partition("|")
        return pb.DeclareCredentialLossResponse(
            blocked_at=to_timestamp(datetime.fromisoformat(blocked)), ended_session_count=int(count)
        )

    async def RequestPasswordReset(
        self, request: pb.RequestPasswordResetRequest, context: Any
    ) -> pb.RequestPasswordResetResponse:
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)
        emails: list[Message] = []

        async def reset(session: AsyncSession) -> str:
            emails.clear()
            requested = await credentials.request_password_reset(session, self._deps, request.email)
            if requested.message is not None:
                emails.append(requested.message)
            return requested.link_expires_at.isoformat()

        expires = await self._once(request, "RequestPasswordReset", reset)
        # Known or not, the answer and its latency are the same (no enumeration): the
        # email goes out after the commit, in the background.
        for email in emails:
            self._deps.courier.post(email)
        return pb.RequestPasswordResetResponse(link_expires_at=to_timestamp(datetime.fromisoformat(expires)))

    async def ConfirmPasswordResetLink(
        self, request: pb.ConfirmPasswordResetLinkRequest, context: Any
    ) -> pb.ConfirmPasswordResetLinkResponse:
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)

        async def confirm(session: AsyncSession) -> str:
            return await credentials.confirm_reset_link(session, self._deps, request.reset_token)

        reset_id = await self._once(request, "ConfirmPasswordResetLink", confirm, secrets=("reset_token",))
        async with self._sessions() as session:
            view = await credentials.view_reset(session, reset_id)
        return pb.ConfirmPasswordResetLinkResponse(
            password_reset_id=view.reset_id,
            code_expires_at=ts(view.code_expires_at),
            masked_phone_number=view.masked_phone,
        )

    async def CompletePasswordReset(
        self, request: pb.CompletePasswordResetRequest, context: Any
    ) -> pb.CompletePasswordResetResponse:
        require_role(Role.SERVICE, services=PUBLIC_CALLERS)
        client = client_of(request.client)
        changed = await self._commit_then_raise(
            lambda s: credentials.complete_reset(
                s, self._deps, request.password_reset_id, request.code, request.new_password, client
            )
        )
        return pb.CompletePasswordResetResponse(changed_at=to_timestamp(changed))

    async def IssueProvisionalCredentials(
        self, request: pb.IssueProvisionalCredentialsRequest, context: Any
    ) -> pb.IssueProvisionalCredentialsResponse:
        principal = self._self_or_staff(request.account_id, (Role.DPO, Role.ADMINISTRATOR))
        if request.new_phone_number and (
            principal.role not in (Role.DPO, Role.ADMINISTRATOR) or principal.subject == request.account_id
        ):
            # A stolen session must not redirect the codes: only staff, having checked who
            # asks, and never for their own account.
            raise PermissionDenied(
                "only the DPO or an administrator replaces the phone number on file, never their own"
            )

        async def issue(session: AsyncSession) -> str:
            link = await credentials.issue_provisional_credentials(
                session,
                self._deps,
                request.account_id,
                request.new_phone_number,
                staff_session_id=principal.session_id or "",
            )
            return link.link_id

        link_id = await self._once(request, "IssueProvisionalCredentials", issue)
        async with self._sessions() as session:
            link = await session.get(ResetLink, link_id)
            assert link is not None
            return pb.IssueProvisionalCredentialsResponse(
                issued_at=to_timestamp(link.created_at), expires_at=to_timestamp(link.expires_at)
            )

    async def FlagPasswordBreach(
        self, request: pb.FlagPasswordBreachRequest, context: Any
    ) -> pb.FlagPasswordBreachResponse:
        require_role(Role.DPO, Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        detected = request.detected_at.ToDatetime(UTC) if request.HasField("detected_at") else None
        detected_at = required(detected, "detected_at")

        async def flag(session: AsyncSession) -> str:
            return await credentials.flag_password_breach(
                session, self._deps, request.account_id, detected_at, request.idempotency_key
            )

        notification_id = await self._once(request, "FlagPasswordBreach", flag)
        async with self._sessions() as session:
            flagged_at = await session.scalar(
                select(AuthenticationEvent.occurred_at)
                .where(
                    AuthenticationEvent.account_id == request.account_id,
                    AuthenticationEvent.kind == EventKind.BREACH_FLAGGED.value,
                )
                .order_by(AuthenticationEvent.occurred_at.desc())
                .limit(1)
            )
        return pb.FlagPasswordBreachResponse(notification_id=notification_id, flagged_at=ts(flagged_at))

    # ------------------------------------------------------------ TOTP

    async def StartTotpEnrolment(
        self, request: pb.StartTotpEnrolmentRequest, context: Any
    ) -> pb.StartTotpEnrolmentResponse:
        principal = self._person()

        async def start(session: AsyncSession) -> str:
            factor = await credentials.start_totp_enrolment(
                session, self._deps, principal.subject, principal.session_id
            )
            return factor.factor_id

        enrolment_id = await self._once(request, "StartTotpEnrolment", start)
        async with self._sessions() as session:
            factor = await credentials.pending_enrolment(session, principal.subject, enrolment_id)
            account = await get_account(session, principal.subject)
            secret = self._deps.keys.decrypt_totp_secret(factor.secret_encrypted, factor.account_id)
            return pb.StartTotpEnrolmentResponse(
                enrolment_id=enrolment_id,
                provisioning_uri=credentials.provisioning_uri(self._deps, account, secret),
                expires_at=to_timestamp(factor.expires_at),
            )

    async def ConfirmTotpEnrolment(
        self, request: pb.ConfirmTotpEnrolmentRequest, context: Any
    ) -> pb.ConfirmTotpEnrolmentResponse:
        principal = self._person()
        async with self._sessions.begin() as session:
            codes = await credentials.confirm_totp_enrolment(
                session,
                self._deps,
                principal.subject,
                principal.session_id,
                request.enrolment_id,
                request.code,
            )
        return pb.ConfirmTotpEnrolmentResponse(recovery_codes=codes)

    async def RegenerateRecoveryCodes(
        self, request: pb.RegenerateRecoveryCodesRequest, context: Any
    ) -> pb.RegenerateRecoveryCodesResponse:
        principal = self._person()
        codes = await self._commit_then_raise(
            lambda s: credentials.regenerate_recovery_codes(
                s, self._deps, principal.subject, principal.session_id, request.code
            )
        )
        return pb.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    async def ResetSecondFactor(
        self, request: pb.ResetSecondFactorRequest, context: Any
    ) -> pb.ResetSecondFactorResponse:
        require_role(Role.ADMINISTRATOR)

        async def reset(session: AsyncSession) -> str:
            return (await credentials.reset_second_factor(session, self._deps, request.account_id)).account_id

        await self._once(request, "ResetSecondFactor", reset)
        async with self._sessions() as session:
            account = await get_account(session, request.account_id)
            return pb.ResetSecondFactorResponse(account=await self._account_pb(session, account))

    # ------------------------------------------------------------ who files for whom

    async def _beneficiary_response(self, beneficiary_id: str) -> pb.Beneficiary:
        async with self._sessions() as session:
            return beneficiary_to_pb(await people.get_beneficiary(session, beneficiary_id, None))

    async def AttachMinor(self, request: pb.AttachMinorRequest, context: Any) -> pb.AttachMinorResponse:
        principal = require_role(Role.PATIENT)
        mode = (
            pb.MinorConsentMode.Name(request.minor_consent_mode).removeprefix("MINOR_CONSENT_MODE_")
            if (request.minor_consent_mode in pb.MinorConsentMode.values())
            else None
        )
        client = client_of(request.client)

        async def attach(session: AsyncSession) -> str:
            auth = await self._auth_context(session, principal, client)
            beneficiary = await people.attach_minor(
                session,
                principal.subject,
                request.first_name,
                request.last_name,
                request.birth_date,
                request.proof_document_id,
                mode,
                request.minor_consent_document_id,
                auth,
            )
            return beneficiary.beneficiary_id

        beneficiary_id = await self._once(request, "AttachMinor", attach)
        return pb.AttachMinorResponse(beneficiary=await self._beneficiary_response(beneficiary_id))

    async def AttachWard(self, request: pb.AttachWardRequest, context: Any) -> pb.AttachWardResponse:
        principal = require_role(Role.PATIENT)

        async def attach(session: AsyncSession) -> str:
            await self._auth_context(session, principal, client_of(request.client))
            beneficiary = await people.attach_adult(
                session,
                principal.subject,
                "ward",
                request.first_name,
                request.last_name,
                request.birth_date,
                request.proof_document_id,
            )
            return beneficiary.beneficiary_id

        beneficiary_id = await self._once(request, "AttachWard", attach)
        return pb.AttachWardResponse(beneficiary=await self._beneficiary_response(beneficiary_id))

    async def RecordMandate(self, request: pb.RecordMandateRequest, context: Any) -> pb.RecordMandateResponse:
        principal = require_role(Role.PATIENT)
        valid_until = request.valid_until.ToDatetime(UTC) if request.HasField("valid_until") else None

        async def record(session: AsyncSession) -> str:
            await self._auth_context(session, principal, client_of(request.client))
            beneficiary = await people.attach_adult(
                session,
                principal.subject,
                "mandator",
                request.first_name,
                request.last_name,
                request.birth_date,
                request.mandate_document_id,
                valid_until,
            )
            return beneficiary.beneficiary_id

        beneficiary_id = await self._once(request, "RecordMandate", record)
        return pb.RecordMandateResponse(beneficiary=await self._beneficiary_response(beneficiary_id))

    async def GetBeneficiary(
        self, request: pb.GetBeneficiaryRequest, context: Any
    ) -> pb.GetBeneficiaryResponse:
        principal = require_role(*Role)
        staff = principal.role in ACCOUNT_READERS
        async with self._sessions() as session:
            beneficiary = await people.get_beneficiary(
                session, request.beneficiary_id, None if staff else principal.subject
            )
            return pb.GetBeneficiaryResponse(beneficiary=beneficiary_to_pb(beneficiary))

    async def ListBeneficiaries(
        self, request: pb.ListBeneficiariesRequest, context: Any
    ) -> pb.ListBeneficiariesResponse:
        principal = self._person()
        async with self._sessions() as session:
            rows = await people.list_beneficiaries(session, principal.subject, request.include_ended)
        return pb.ListBeneficiariesResponse(beneficiaries=[beneficiary_to_pb(b) for b in rows])

    async def EndRepresentation(
        self, request: pb.EndRepresentationRequest, context: Any
    ) -> pb.EndRepresentationResponse:
        principal = self._person()

        async def end(session: AsyncSession) -> str:
            return (
                await people.end_representation(session, request.beneficiary_id, principal.subject)
            ).beneficiary_id

        beneficiary_id = await self._once(request, "EndRepresentation", end)
        return pb.EndRepresentationResponse(beneficiary=await self._beneficiary_response(beneficiary_id))

    # ------------------------------------------------------------ referrals

    async def ReferProspect(self, request: pb.ReferProspectRequest, context: Any) -> pb.ReferProspectResponse:
        principal = require_role(Role.REFERRING_DOCTOR)
        contact = request.WhichOneof("contact")

        async def refer(session: AsyncSession) -> str:
            prospect = await people.refer_prospect(
                session,
                self._deps,
                principal.subject,
                request.first_name,
                request.last_name,
                request.email if contact == "email" else "",
                request.phone_number if contact == "phone_number" else "",
                request.locale,
            )
            return prospect.prospect_id

        prospect_id = await self._once(request, "ReferProspect", refer)
        async with self._sessions() as session:
            prospect = await session.get(Prospect, prospect_id)
            assert prospect is not None
            return pb.ReferProspectResponse(prospect=prospect_to_pb(prospect))

    async def ResendReferralInvitation(
        self, request: pb.ResendReferralInvitationRequest, context: Any
    ) -> pb.ResendReferralInvitationResponse:
        principal = require_role(Role.REFERRING_DOCTOR)

        async def resend(session: AsyncSession) -> str:
            return (
                await people.resend_invitation(session, self._deps, principal.subject, request.prospect_id)
            ).prospect_id

        prospect_id = await self._once(request, "ResendReferralInvitation", resend)
        async with self._sessions() as session:
            prospect = await session.get(Prospect, prospect_id)
            assert prospect is not None
            return pb.ResendReferralInvitationResponse(prospect=prospect_to_pb(prospect))

    async def ListReferrals(self, request: pb.ListReferralsRequest, context: Any) -> pb.ListReferralsResponse:
        principal = require_role(Role.REFERRING_DOCTOR)
        offset, limit = page(request.page_size, request.page_token)
        async with self._sessions() as session:
            rows = await people.list_referrals(session, principal.subject, offset, limit)
        return pb.ListReferralsResponse(
            prospects=[prospect_to_pb(p) for p in rows], next_page_token=next_token(offset, limit, len(rows))
        )

    # ------------------------------------------------------------ legal texts and evidence

    async def PublishLegalText(
        self, request: pb.PublishLegalTextRequest, context: Any
    ) -> pb.PublishLegalTextResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        kind = required(from_pb_enum(pb.LegalTextKind, TextKind, request.kind), "kind")
        effective = request.effective_at.ToDatetime(UTC) if request.HasField("effective_at") else None
        notice = self._deps.policy.legal_text_notice if request.announce else None

        async def publish(session: AsyncSession) -> str:
            text = await evidence.publish_text(
                session, kind, request.version, request.locale, request.body, effective, notice
            )
            return text.text_id

        text_id = await self._once(request, "PublishLegalText", publish)
        async with self._sessions() as session:
            return pb.PublishLegalTextResponse(
                text=text_to_pb(await evidence.get_text(session, text_id), False)
            )

    async def GetCurrentLegalText(
        self, request: pb.GetCurrentLegalTextRequest, context: Any
    ) -> pb.GetCurrentLegalTextResponse:
        require_role(*Role)
        kind = required(from_pb_enum(pb.LegalTextKind, TextKind, request.kind), "kind")
        async with self._sessions() as session:
            text = await evidence.current_text(session, kind, request.locale or "fr")
        if text is None:
            raise NotFound("no version of this text is in force")
        return pb.GetCurrentLegalTextResponse(text=text_to_pb(text, True))

    async def GetLegalText(self, request: pb.GetLegalTextRequest, context: Any) -> pb.GetLegalTextResponse:
        require_role(*Role)
        async with self._sessions() as session:
            return pb.GetLegalTextResponse(
                text=text_to_pb(await evidence.get_text(session, request.text_id), True)
            )

    async def ListLegalTextVersions(
        self, request: pb.ListLegalTextVersionsRequest, context: Any
    ) -> pb.ListLegalTextVersionsResponse:
        require_role(*Role)
        kind = required(from_pb_enum(pb.LegalTextKind, TextKind, request.kind), "kind")
        async with self._sessions() as session:
            texts = await evidence.list_versions(session, kind, request.locale)
        return pb.ListLegalTextVersionsResponse(texts=[text_to_pb(t, False) for t in texts])

    async def _record_response(self, record_id: str) -> pb.EvidenceRecord:
        async with self._sessions() as session:
            record = await session.scalar(select(EvidenceRecord).where(EvidenceRecord.record_id == record_id))
            assert record is not None
            return record_to_pb(record)

    async def AcceptLegalText(
        self, request: pb.AcceptLegalTextRequest, context: Any
    ) -> pb.AcceptLegalTextResponse:
        principal = self._person()

        async def accept(session: AsyncSession) -> str:
            auth = await self._auth_context(session, principal, client_of(request.client))
            record = await evidence.accept_text(
                session,
                principal.subject,
                request.text_id,
                request.text_sha256_hex,
                request.beneficiary_id,
                auth,
            )
            return record.record_id

        record_id = await self._once(request, "AcceptLegalText", accept)
        return pb.AcceptLegalTextResponse(record=await self._record_response(record_id))

    async def CheckLatestTermsAccepted(
        self, request: pb.CheckLatestTermsAcceptedRequest, context: Any
    ) -> pb.CheckLatestTermsAcceptedResponse:
        principal = require_role(*Role)
        if principal.subject != request.account_id and principal.role not in ACCOUNT_READERS:
            raise NotFound("account not found")
        async with self._sessions() as session:
            account = await get_account(session, request.account_id)
            check = await evidence.latest_terms_check(session, account.account_id, account.locale)
        return pb.CheckLatestTermsAcceptedResponse(
            accepted=check.accepted,
            current_version=check.current.version if check.current else "",
            current_text_id=check.current.text_id if check.current else "",
            accepted_version=check.accepted_version,
            accepted_at=ts(check.accepted_at),
        )

    async def ListAnnouncementRecipients(
        self, request: pb.ListAnnouncementRecipientsRequest, context: Any
    ) -> pb.ListAnnouncementRecipientsResponse:
        require_role(Role.SERVICE, services=frozenset({"worker"}))
        if request.locale not in {"", "fr", "en"}:
            raise InvalidArgument('locale must be "fr", "en" or empty')
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        limit = min(request.page_size or 50, MAX_RECIPIENT_PAGE)
        after = request.page_token
        if after and (len(after) != 36 or after.count("-") != 4):
            raise InvalidArgument("page_token is not valid")
        async with self._sessions() as session:
            rows = await evidence.announcement_recipients(session, request.locale, after, limit)
        return pb.ListAnnouncementRecipientsResponse(
            recipients=[
                pb.AnnouncementRecipient(
                    account_id=r.account_id, email=r.email, locale=r.locale, first_name=r.first_name
                )
                for r in rows
            ],
            next_page_token=rows[-1].account_id if len(rows) == limit else "",
        )

    async def GiveConsent(self, request: pb.GiveConsentRequest, context: Any) -> pb.GiveConsentResponse:
        principal = self._person()
        kind = required(from_pb_enum(pb.ConsentKind, ConsentKind, request.kind), "kind")

        async def give(session: AsyncSession) -> str:
            auth = await self._auth_context(session, principal, client_of(request.client))
            record = await evidence.give_consent(
                session,
                principal.subject,
                kind,
                request.text_id,
                request.text_sha256_hex,
                request.beneficiary_id,
                auth,
            )
            return record.record_id

        record_id = await self._once(request, "GiveConsent", give)
        return pb.GiveConsentResponse(record=await self._record_response(record_id))

    async def WithdrawConsent(
        self, request: pb.WithdrawConsentRequest, context: Any
    ) -> pb.WithdrawConsentResponse:
        principal = self._person()
        kind = required(from_pb_enum(pb.ConsentKind, ConsentKind, request.kind), "kind")
        closes = kind is ConsentKind.HEALTH_DATA_PROCESSING and not request.beneficiary_id

        async def withdraw(session: AsyncSession) -> str:
            auth = await self._auth_context(session, principal, client_of(request.client))
            record = await evidence.withdraw_consent(
                session, principal.subject, kind, request.beneficiary_id, auth
            )
            if closes:  # CNS-06: the service stops, the account is closed, data archived
                await close_account(
                    session, principal.subject, ClosureReason.CONSENT_WITHDRAWN, principal.subject
                )
            return record.record_id

        record_id = await self._once(request, "WithdrawConsent", withdraw)
        return pb.WithdrawConsentResponse(
            record=await self._record_response(record_id), account_closed=closes
        )

    async def _objection(self, request: Any, operation: str, lift: bool) -> pb.EvidenceRecord:
        principal = self._person()
        kind = required(from_pb_enum(pb.ObjectionKind, ObjectionKind, request.kind), "kind")

        async def act(session: AsyncSession) -> str:
            auth = await self._auth_context(session, principal, client_of(request.client))
            record = await evidence.record_objection(
                session, principal.subject, kind, request.beneficiary_id, auth, lift
            )
            return record.record_id

        return await self._record_response(await self._once(request, operation, act))

    async def RecordObjection(
        self, request: pb.RecordObjectionRequest, context: Any
    ) -> pb.RecordObjectionResponse:
        return pb.RecordObjectionResponse(record=await self._objection(request, "RecordObjection", False))

    async def WithdrawObjection(
        self, request: pb.WithdrawObjectionRequest, context: Any
    ) -> pb.WithdrawObjectionResponse:
        return pb.WithdrawObjectionResponse(record=await self._objection(request, "WithdrawObjection", True))

    async def GetConsentStatus(
        self, request: pb.GetConsentStatusRequest, context: Any
    ) -> pb.GetConsentStatusResponse:
        principal = require_role(*Role)
        if principal.subject != request.account_id and principal.role not in ACCOUNT_READERS:
            raise NotFound("account not found")
        async with self._sessions() as session:
            await get_account(session, request.account_id)
            beneficiary = None
            if request.beneficiary_id:
                beneficiary = await people.get_beneficiary(
                    session, request.beneficiary_id, request.account_id
                )
            consents, objections = await evidence.consent_state(
                session, request.account_id, request.beneficiary_id
            )
            notice = await evidence.notice_accepted(session, request.account_id, beneficiary)
        return pb.GetConsentStatusResponse(
            given_consents=sorted(to_pb_enum(pb.ConsentKind, c) for c in consents),
            objections=sorted(to_pb_enum(pb.ObjectionKind, o) for o in objections),
            notice_accepted=notice,
        )

    async def ListEvidenceRecords(
        self, request: pb.ListEvidenceRecordsRequest, context: Any
    ) -> pb.ListEvidenceRecordsResponse:
        self._self_or_staff(request.account_id, (Role.DPO, Role.ADMINISTRATOR, Role.COORDINATOR))
        offset, limit = page(request.page_size, request.page_token)
        async with self._sessions() as session:
            rows = await evidence.list_records(session, request.account_id, offset, limit)
        return pb.ListEvidenceRecordsResponse(
            records=[record_to_pb(r) for r in rows], next_page_token=next_token(offset, limit, len(rows))
        )

    async def VerifyEvidenceChain(
        self, request: pb.VerifyEvidenceChainRequest, context: Any
    ) -> pb.VerifyEvidenceChainResponse:
        require_role(Role.DPO, Role.ADMINISTRATOR, Role.SERVICE)
        async with self._sessions() as session:
            report = await evidence.verify_chain(session)
        response = pb.VerifyEvidenceChainResponse(
            intact=report.intact, checked_count=report.checked, first_bad_sequence=report.first_bad_sequence
        )
        if report.problem is not None:
            response.problem = pb.ChainProblem.Value(f"CHAIN_PROBLEM_{report.problem.value}")
        return response

    # ------------------------------------------------------------ authentication log

    async def ListAuthenticationEvents(
        self, request: pb.ListAuthenticationEventsRequest, context: Any
    ) -> pb.ListAuthenticationEventsResponse:
        self._self_or_staff(request.account_id, (Role.DPO, Role.ADMINISTRATOR, Role.COORDINATOR))
        offset, limit = page(request.page_size, request.page_token)
        statement = select(AuthenticationEvent).where(AuthenticationEvent.account_id == request.account_id)
        if request.HasField("since"):
            statement = statement.where(AuthenticationEvent.occurred_at >= request.since.ToDatetime(UTC))
        async with self._sessions() as session:
            rows = list(
                await session.scalars(
                    statement.order_by(AuthenticationEvent.occurred_at.desc(), AuthenticationEvent.event_id)
                    .offset(offset)
                    .limit(limit)
                )
            )
        return pb.ListAuthenticationEventsResponse(
            events=[
                pb.AuthenticationEvent(
                    event_id=e.event_id,
                    account_id=e.account_id,
                    kind=to_pb_enum(pb.AuthenticationEventKind, EventKind(e.kind)),
                    occurred_at=to_timestamp(e.occurred_at),
                    session_id=e.session_id,
                    ip_address=e.ip_address,
                    user_agent=e.user_agent,
                )
                for e in rows
            ],
            next_page_token=next_token(offset, limit, len(rows)),
        )


def session_policy(idle_seconds: int, absolute_seconds: int) -> SessionPolicy:
    return SessionPolicy(timedelta(seconds=idle_seconds), timedelta(seconds=absolute_seconds))


__all__ = ["Beneficiary", "IdentityServicer", "TotpFactor", "session_policy"]
