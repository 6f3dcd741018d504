"""Account set-up pages: the authenticator enrolment at a staff member's first login
(ACC-12), the password change (forced after a breach or provisional credentials, ACC-10),
and the people a patient files for: minors, wards, mandators (ACC-03, ACC-13), each
attached with their proof uploaded to the dossier first."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import grpc
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.gateway.clients import Caller, ServiceClients
from services.gateway.web.page import (
    NEXT_COOKIE,
    ClientsDep,
    Page,
    PageDep,
    client_info,
    http_status,
    new_key,
)
from services.gateway.web.patient import upload_refused
from services.gateway.web.uploads import BadUpload, ReceivedFile, TooLarge, receive_upload, request_stream
from services.shared.protoconv import pb_enum_to_code

router = APIRouter(include_in_schema=False)
Csrf = Annotated[str, Form()]
STAFF_ROLES = ("referent_doctor", "coordinator", "referring_doctor", "partner_user", "dpo", "administrator")

# The purpose of each kind's proof in the dossier, and the capacity a request is filed in.
PROOF_PURPOSE = {
    "minor": dossier_pb2.DOCUMENT_PURPOSE_PROOF_OF_REPRESENTATION,
    "ward": dossier_pb2.DOCUMENT_PURPOSE_PROOF_OF_REPRESENTATION,
    "mandator": dossier_pb2.DOCUMENT_PURPOSE_MANDATE,
}
# The minor's own signed consent, sent with the parent's proof from 15 (ACC-13).
MINOR_CONSENT_FILE = "minor_consent_file"
# Identity decides (article 45 of the French data protection act); the form checks it first
# only to say what is missing before anything is uploaded.
MINOR_SELF_CONSENT_AGE = 15
CAPACITY_BY_KIND = {
    "minor": "legal_representative_of_minor",
    "ward": "legal_representative_of_ward",
    "mandator": "mandated_person",
}


def _signed_in(p: Page) -> Caller | Response:
    return p.caller if p.caller is not None else p.to_login()


def manual_key(provisioning_uri: str) -> str:
    """The secret of an otpauth:// URI in groups of four, to type into an app by hand."""
    secret = parse_qs(urlsplit(provisioning_uri).query).get("secret", [""])[0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _next_page(p: Page, caller: Caller) -> str:
    """After a forced step of the first login: the next one, else the page asked for."""
    return "/account/password?forced=1" if caller.must_change_password else p.after_login()


# --- authenticator enrolment (ACC-12) ---------------------------------------------------------


@router.get("/account/totp", response_class=HTMLResponse)
async def totp_page(p: PageDep, clients: ClientsDep) -> Response:
    caller = _signed_in(p)
    if isinstance(caller, Response):
        return caller
    if caller.role not in STAFF_ROLES:
        return p.redirect(p.role_home())
    try:
        started = await clients.identity.StartTotpEnrolment(
            identity_pb2.StartTotpEnrolmentRequest(idempotency_key=f"totp:{new_key()}"),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.render(
        "totp.html",
        enrolment_id=started.enrolment_id,
        provisioning_uri=started.provisioning_uri,
        manual_key=manual_key(started.provisioning_uri),
        first_login=caller.must_enrol_totp,
    )


@router.post("/account/totp")
async def totp_confirm(
    p: PageDep,
    clients: ClientsDep,
    enrolment_id: Annotated[str, Form(max_length=64)],
    provisioning_uri: Annotated[str, Form(max_length=512)],
    code: Annotated[str, Form(max_length=16)],
    csrf_token: Csrf = "",
) -> Response:
    caller = _signed_in(p)
    if isinstance(caller, Response):
        return caller
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("login_code"):
        return limited
    try:
        confirmed = await clients.identity.ConfirmTotpEnrolment(
            identity_pb2.ConfirmTotpEnrolmentRequest(enrolment_id=enrolment_id, code=code.strip()),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        status = http_status(error)
        if status >= 500 or status == 404:
            return p.service_error(error)
        # A wrong or late code: the same key stays on screen, the person tries again.
        return p.render(
            "totp.html",
            status=400,
            error=p.t("totp_bad_code"),
            enrolment_id=enrolment_id,
            provisioning_uri=provisioning_uri,
            manual_key=manual_key(provisioning_uri),
            first_login=caller.must_enrol_totp,
        )
    # Shown once, never again: the page is not cached (no-store) and not stored here.
    return p.render(
        "recovery_codes.html", recovery_codes=list(confirmed.recovery_codes), next_page=_next_page(p, caller)
    )


# --- password change (ACC-10) -----------------------------------------------------------------


@router.get("/account/password", response_class=HTMLResponse)
async def password_page(p: PageDep) -> Response:
    caller = _signed_in(p)
    if isinstance(caller, Response):
        return caller
    return p.render("password.html", forced=caller.must_change_password, form_key=new_key())


@router.post("/account/password")
async def password_change(
    p: PageDep,
    clients: ClientsDep,
    current_password: Annotated[str, Form(max_length=256)],
    new_password: Annotated[str, Form(max_length=256)],
    confirm_password: Annotated[str, Form(max_length=256)],
    form_key: Annotated[str, Form(min_length=8, max_length=64)],
    csrf_token: Csrf = "",
) -> Response:
    caller = _signed_in(p)
    if isinstance(caller, Response):
        return caller
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("login"):
        return limited

    def again(status: int, message: str) -> Response:
        return p.render(
            "password.html",
            status=status,
            error=message,
            forced=caller.must_change_password,
            form_key=new_key(),
        )

    if new_password != confirm_password:
        return again(400, p.t("passwords_differ"))
    try:
        await clients.identity.ChangePassword(
            identity_pb2.ChangePasswordRequest(
                idempotency_key=f"password:{form_key}", current_password=current_password,
                new_password=new_password, client=client_info(p.request),
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return again(400, p.t("current_password_wrong"))
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return again(400, p.t("form_error", detail=error.details() or ""))
        return p.service_error(error)
    if caller.must_change_password:
        response = p.redirect(p.after_login())
        response.delete_cookie(NEXT_COOKIE, path="/")
        return response
    return p.message(200, notice=p.t("password_changed"))


# --- the people a patient files for (ACC-03, ACC-13) -------------------------------------------


def beneficiary_view(b: identity_pb2.Beneficiary) -> dict[str, Any]:
    kind = pb_enum_to_code(identity_pb2.BeneficiaryKind, b.kind)
    return {
        "beneficiary_id": b.beneficiary_id,
        "name": f"{b.first_name} {b.last_name}",
        "kind": kind,
        "capacity": CAPACITY_BY_KIND.get(kind, ""),
        "status": pb_enum_to_code(identity_pb2.RepresentationStatus, b.status),
    }


async def list_beneficiaries(clients: ServiceClients, caller: Caller) -> list[dict[str, Any]]:
    listed = await clients.identity.ListBeneficiaries(
        identity_pb2.ListBeneficiariesRequest(), metadata=caller.metadata
    )
    return [beneficiary_view(b) for b in listed.beneficiaries]


def _require_patient(p: Page) -> Caller | Response:
    if p.caller is None:
        return p.to_login()
    if p.caller.role != "patient":
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


@router.get("/account/beneficiaries", response_class=HTMLResponse)
async def beneficiaries_page(p: PageDep, clients: ClientsDep) -> Response:
    caller = _require_patient(p)
    if isinstance(caller, Response):
        return caller
    return p.render(
        "beneficiaries.html",
        beneficiaries=await list_beneficiaries(clients, caller),
        upload_key=new_key(),
        max_upload_bytes=p.request.app.state.settings.max_upload_bytes,
        kind=p.request.query_params.get("kind", "minor"),
    )


def age_today(birth_date: str) -> int | None:
    """The age on today's date (UTC, as identity counts it); None when not a date."""
    try:
        birth = date.fromisoformat(birth_date)
    except ValueError:
        return None
    today = datetime.now(UTC).date()
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


async def account_document(
    clients: ServiceClients,
    caller: Caller,
    idempotency_key: str,
    purpose: dossier_pb2.DocumentPurpose.ValueType,
    received: ReceivedFile,
) -> str:
    """Streams one file to the dossier as an account-level document; returns its id."""
    uploaded = await clients.dossier.UploadDocument(
        request_stream(
            dossier_pb2.UploadDocumentRequest(
                idempotency_key=idempotency_key,
                metadata=dossier_pb2.UploadDocumentMetadata(
                    purpose=purpose,
                    file_name=received.file_name,
                    declared_size_bytes=received.size,
                ),
            ),
            received,
            lambda b: dossier_pb2.UploadDocumentRequest(chunk=b),
        ),
        metadata=caller.metadata,
        timeout=clients.transfer_timeout,
    )
    return str(uploaded.document.document_id)


@router.post("/account/beneficiaries")
async def attach_beneficiary(p: PageDep, clients: ClientsDep) -> Response:
    """The proof streams to the dossier (an account-level document), then identity records
    the representation with that document's id. For a minor from 15, the minor's own signed
    consent is a second file of the same form, stored the same way (ACC-13)."""
    caller = _require_patient(p)
    if isinstance(caller, Response):
        return caller
    if not p.origin_ok():
        return p.forbidden()
    if limited := p.too_many("upload"):
        return limited
    limit = p.request.app.state.settings.max_upload_bytes
    try:
        received = await receive_upload(p.request, limit, optional_files=(MINOR_CONSENT_FILE,))
    except TooLarge:
        return upload_refused(p, 413, p.t("upload_too_large", mb=limit // (1024 * 1024) or 1))
    except BadUpload as exc:
        return upload_refused(p, 400, p.t("form_error", detail=str(exc)))
    try:
        fields = received.fields
        if not p.csrf_ok(fields.get("csrf_token")):
            return p.forbidden()
        kind = fields.get("kind", "")
        if kind not in PROOF_PURPOSE:
            return upload_refused(p, 400, p.t("form_error", detail="kind"))
        purpose = PROOF_PURPOSE[kind]
        key = fields.get("upload_key", "")[:64] or new_key()
        first_name, last_name = fields.get("first_name", "")[:100], fields.get("last_name", "")[:100]
        birth_date = fields.get("birth_date", "")[:10]
        minor_consent = received.extra.get(MINOR_CONSENT_FILE)
        age = age_today(birth_date)
        # Not a date: identity says so; otherwise the age picks who consents.
        own_consent = minor_consent is not None if age is None else age >= MINOR_SELF_CONSENT_AGE
        if kind == "minor" and own_consent and minor_consent is None:
            return upload_refused(p, 400, p.t("minor_consent_required"))
        try:
            document_id = await account_document(clients, caller, f"proof:{key}", purpose, received)
            info = client_info(p.request)
            if kind == "minor":
                request = identity_pb2.AttachMinorRequest(
                    idempotency_key=f"minor:{key}", first_name=first_name, last_name=last_name,
                    birth_date=birth_date, proof_document_id=document_id, client=info,
                )  # fmt: skip
                if own_consent and minor_consent is not None:
                    request.minor_consent_mode = identity_pb2.MINOR_CONSENT_MODE_MINOR_OWN_CONSENT
                    request.minor_consent_document_id = await account_document(
                        clients, caller, f"minor-consent:{key}",
                        dossier_pb2.DOCUMENT_PURPOSE_MINOR_CONSENT, minor_consent,
                    )  # fmt: skip
                elif fields.get("parent_attests") == "yes":
                    request.minor_consent_mode = identity_pb2.MINOR_CONSENT_MODE_PARENT_ATTESTS_MINOR_INFORMED
                await clients.identity.AttachMinor(request, metadata=caller.metadata)
            elif kind == "ward":
                await clients.identity.AttachWard(
                    identity_pb2.AttachWardRequest(
                        idempotency_key=f"ward:{key}", first_name=first_name, last_name=last_name,
                        birth_date=birth_date, proof_document_id=document_id, client=info,
                    ),
                    metadata=caller.metadata,
                )  # fmt: skip
            else:
                mandate = identity_pb2.RecordMandateRequest(
                    idempotency_key=f"mandate:{key}", first_name=first_name, last_name=last_name,
                    birth_date=birth_date, mandate_document_id=document_id, client=info,
                )  # fmt: skip
                until = fields.get("valid_until", "")
                if until:
                    try:
                        day = datetime.fromisoformat(until[:10]).date()
                    except ValueError:
                        return upload_refused(p, 400, p.t("form_error", detail="valid_until"))
                    stamp = Timestamp()
                    stamp.FromDatetime(datetime.combine(day, time(23, 59), tzinfo=UTC))
                    mandate.valid_until.CopyFrom(stamp)
                await clients.identity.RecordMandate(mandate, metadata=caller.metadata)
        except grpc.aio.AioRpcError as error:
            status = http_status(error)
            if status >= 500:
                return upload_refused(p, 503, p.t("unavailable"))
            return upload_refused(p, status, p.t("form_error", detail=error.details() or ""))
    finally:
        received.close()
    return p.redirect("/cases/new?attached=1")
