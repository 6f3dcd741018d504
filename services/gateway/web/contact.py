""" "Mon compte": changing one's email or mobile phone (ACC-06, SEC-01).

Behind a step-up for the CHANGE_CREDENTIALS purpose, asked here (the code goes to the phone
on file, TOTP for staff): the generic /step-up page maps other paths to other purposes. A
new email address gets a 6-digit code by email, a new phone number one by SMS, and only the
code confirms the change: until then the address or number on file stays in force (the old
and new addresses are told by identity once an email changes). Thin: identity holds every
rule; this turns forms into RPCs and statuses into messages. Every POST checks CSRF; code
sending and checking are rate limited (429 with Retry-After)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response
from secondopinion.identity.v1 import identity_pb2

from services.gateway.web.page import ClientsDep, Page, PageDep, client_info, new_key
from services.shared.protoconv import pb_enum_to_code

router = APIRouter(include_in_schema=False)

PAGE = "/account/contact"
STEP_UP_COOKIE = "so_contact_stepup"
PHONE_CHANGE_COOKIE = "so_phone_change"
EMAIL_CHANGE_COOKIE = "so_email_change"
COOKIE_MAX_AGE = 900
# Code sending shares the login codes' budget per client (security.DEFAULT_LIMITS).
CODE_LIMIT = "contact_code"
Csrf = Annotated[str, Form()]
FormKey = Annotated[str, Form(max_length=64)]


async def _render(
    p: Page,
    clients: ClientsDep,
    status: int = 200,
    *,
    step: str = "",
    factor: str = "",
    masked_new_phone: str = "",
    new_email: str = "",
    **context: Any,
) -> Response:
    """The page in its state: step-up to pass, changes to make, or a code to confirm."""
    assert p.caller is not None
    try:
        got = await clients.identity.GetAccount(
            identity_pb2.GetAccountRequest(account_id=p.caller.account_id), metadata=p.caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    if not step:
        if p.request.cookies.get(PHONE_CHANGE_COOKIE):
            step = "confirm_phone"
        elif p.request.cookies.get(EMAIL_CHANGE_COOKIE):
            step = "confirm_email"
        elif p.request.cookies.get(STEP_UP_COOKIE):
            step = "step_up_code"
        else:
            step = "change" if p.caller.stepped_up else "step_up"
    phone = got.account.phone_number
    return p.render(
        "contact.html",
        status=status,
        step=step,
        factor=factor,
        email=got.account.email,
        masked_phone=f"{phone[:3]} {'•' * max(len(phone) - 5, 0)}{phone[-2:]}" if len(phone) > 5 else "•••",
        masked_new_phone=masked_new_phone,
        new_email=new_email,
        form_key=new_key(),
        **context,
    )


def _signed_in(p: Page, csrf_token: str) -> Response | None:
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    return None


@router.get(PAGE, response_class=HTMLResponse)
async def contact_page(p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.to_login()
    done = p.request.query_params.get("done", "")
    notice = p.t(f"contact_{done}_changed") if done in ("email", "phone") else ""
    return await _render(p, clients, notice=notice)


@router.post(f"{PAGE}/step-up/start")
async def contact_step_up_start(p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    if refused := _signed_in(p, csrf_token):
        return refused
    assert p.caller is not None
    if limited := p.too_many(CODE_LIMIT):
        return limited
    try:
        started = await clients.identity.StartStepUp(
            identity_pb2.StartStepUpRequest(
                idempotency_key=new_key(), purpose=identity_pb2.STEP_UP_PURPOSE_CHANGE_CREDENTIALS
            ),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    factor = pb_enum_to_code(identity_pb2.SecondFactorKind, started.factor)
    response = await _render(p, clients, step="step_up_code", factor=factor)
    p.set_cookie(response, STEP_UP_COOKIE, started.step_up_id, max_age=COOKIE_MAX_AGE, samesite="strict")
    return response


@router.post(f"{PAGE}/step-up/verify")
async def contact_step_up_verify(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Csrf = "",
) -> Response:
    if refused := _signed_in(p, csrf_token):
        return refused
    assert p.caller is not None
    if limited := p.too_many(CODE_LIMIT):
        return limited
    step_up_id = p.request.cookies.get(STEP_UP_COOKIE, "")
    if not step_up_id:
        return p.redirect(PAGE)
    try:
        await clients.identity.VerifyStepUp(
            identity_pb2.VerifyStepUpRequest(step_up_id=step_up_id, code=code.strip()),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return await _render(p, clients, 401, step="step_up_code", error=p.t("bad_code"))
        response = await _render(p, clients, 409, step="step_up", error=p.t("contact_start_again"))
        response.delete_cookie(STEP_UP_COOKIE, path="/")
        return response
    response = p.redirect(PAGE)
    response.delete_cookie(STEP_UP_COOKIE, path="/")
    return response


def _needs_step_up(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.FAILED_PRECONDITION and "step-up" in (error.details() or "")


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One kind of change (email or phone): its cookie and messages (i18n keys)."""

    name: str  # "email" or "phone": the path segment, the page step and the done notice
    cookie: str
    invalid: str
    same: str
    too_many: str
    taken: str = ""  # only an email can belong to another account


EMAIL = ContactChange(
    "email", EMAIL_CHANGE_COOKIE, "contact_email_invalid", "contact_email_same",
    "contact_too_many_email_codes", taken="contact_email_taken",
)  # fmt: skip
PHONE = ContactChange(
    "phone", PHONE_CHANGE_COOKIE, "contact_phone_invalid", "contact_phone_same", "contact_too_many_codes"
)


async def _send_start(
    p: Page, clients: ClientsDep, change: ContactChange, value: str, key: str
) -> tuple[str, str, str]:
    """Identity's start call: the change id, and the new address (in full, to spot a typo)
    or the masked new number the confirmation page shows."""
    assert p.caller is not None
    client = client_info(p.request)
    if change is EMAIL:
        to_email = await clients.identity.StartEmailChange(
            identity_pb2.StartEmailChangeRequest(
                idempotency_key=f"contact-email:{key}", email=value, client=client
            ),
            metadata=p.caller.metadata,
        )
        return to_email.change_id, to_email.email, ""
    to_phone = await clients.identity.StartPhoneNumberChange(
        identity_pb2.StartPhoneNumberChangeRequest(
            idempotency_key=f"contact-phone:{key}", phone_number=value, client=client
        ),
        metadata=p.caller.metadata,
    )
    return to_phone.change_id, "", to_phone.masked_phone_number


async def _send_confirm(
    p: Page, clients: ClientsDep, change: ContactChange, change_id: str, code: str, key: str
) -> None:
    assert p.caller is not None
    client = client_info(p.request)
    if change is EMAIL:
        await clients.identity.ConfirmEmailChange(
            identity_pb2.ConfirmEmailChangeRequest(
                idempotency_key=f"contact-email-confirm:{key}", change_id=change_id, code=code, client=client
            ),
            metadata=p.caller.metadata,
        )
    else:
        await clients.identity.ConfirmPhoneNumberChange(
            identity_pb2.ConfirmPhoneNumberChangeRequest(
                idempotency_key=f"contact-confirm:{key}", change_id=change_id, code=code, client=client
            ),
            metadata=p.caller.metadata,
        )


async def _start_change(
    p: Page, clients: ClientsDep, change: ContactChange, value: str, form_key: str
) -> Response:
    """Sends a code to the new address or number; the page then asks for it."""
    assert p.caller is not None
    if limited := p.too_many(CODE_LIMIT):
        return limited
    value = value.strip()
    if not value:
        return await _render(p, clients, 400, step="change", error=p.t(change.invalid))
    try:
        change_id, new_email, masked_new_phone = await _send_start(
            p, clients, change, value, form_key or new_key()
        )
    except grpc.aio.AioRpcError as error:
        status = error.code()
        if _needs_step_up(error):
            return await _render(p, clients, 403, step="step_up", error=p.t("contact_step_up_needed"))
        if status == grpc.StatusCode.INVALID_ARGUMENT:
            return await _render(p, clients, 400, step="change", error=p.t(change.invalid))
        if status == grpc.StatusCode.ALREADY_EXISTS and change.taken:
            return await _render(p, clients, 409, step="change", error=p.t(change.taken))
        if status == grpc.StatusCode.FAILED_PRECONDITION:
            return await _render(p, clients, 409, step="change", error=p.t(change.same))
        if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
            response = await _render(p, clients, 429, step="change", error=p.t(change.too_many))
            response.headers["Retry-After"] = "3600"  # identity's budget is per hour
            return response
        return p.service_error(error)
    response = await _render(
        p, clients, step=f"confirm_{change.name}", new_email=new_email, masked_new_phone=masked_new_phone
    )
    p.set_cookie(response, change.cookie, change_id, max_age=COOKIE_MAX_AGE, samesite="strict")
    return response


async def _confirm_change(
    p: Page, clients: ClientsDep, change: ContactChange, code: str, form_key: str
) -> Response:
    """Checks the code received at the new address or number; only then does it change."""
    assert p.caller is not None
    if limited := p.too_many(CODE_LIMIT):
        return limited
    change_id = p.request.cookies.get(change.cookie, "")
    if not change_id:
        return p.redirect(PAGE)
    try:
        await _send_confirm(p, clients, change, change_id, code.strip(), form_key or new_key())
    except grpc.aio.AioRpcError as error:
        status = error.code()
        if status in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return await _render(p, clients, 401, step=f"confirm_{change.name}", error=p.t("bad_code"))
        if status == grpc.StatusCode.PERMISSION_DENIED:  # locked after too many codes
            return p.message(403, error=p.t("locked"))
        # The change has ended (expired, too many codes, replaced), or, for an email, the
        # address was taken by another account meanwhile: start again.
        ended = {
            grpc.StatusCode.FAILED_PRECONDITION: "contact_start_again",
            grpc.StatusCode.NOT_FOUND: "contact_start_again",
        }
        if change.taken:
            ended[grpc.StatusCode.ALREADY_EXISTS] = change.taken
        if status not in ended:
            return p.service_error(error)
        step = "change" if p.caller.stepped_up else "step_up"
        response = await _render(p, clients, 409, step=step, error=p.t(ended[status]))
        response.delete_cookie(change.cookie, path="/")
        return response
    response = p.redirect(f"{PAGE}?done={change.name}")
    response.delete_cookie(change.cookie, path="/")
    return response


def _cancel_change(p: Page, change: ContactChange, csrf_token: str) -> Response:
    """Forgets the pending change here; identity ends it at its expiry or the next start."""
    if refused := _signed_in(p, csrf_token):
        return refused
    response = p.redirect(PAGE)
    response.delete_cookie(change.cookie, path="/")
    return response


@router.post(f"{PAGE}/email")
async def start_email_change(
    p: PageDep,
    clients: ClientsDep,
    email: Annotated[str, Form(max_length=320)] = "",
    form_key: FormKey = "",
    csrf_token: Csrf = "",
) -> Response:
    return _signed_in(p, csrf_token) or await _start_change(p, clients, EMAIL, email, form_key)


@router.post(f"{PAGE}/email/confirm")
async def confirm_email_change(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)] = "",
    form_key: FormKey = "",
    csrf_token: Csrf = "",
) -> Response:
    return _signed_in(p, csrf_token) or await _confirm_change(p, clients, EMAIL, code, form_key)


@router.post(f"{PAGE}/email/cancel")
async def cancel_email_change(p: PageDep, csrf_token: Csrf = "") -> Response:
    return _cancel_change(p, EMAIL, csrf_token)


@router.post(f"{PAGE}/phone")
async def start_phone_change(
    p: PageDep,
    clients: ClientsDep,
    phone_number: Annotated[str, Form(max_length=32)] = "",
    form_key: FormKey = "",
    csrf_token: Csrf = "",
) -> Response:
    return _signed_in(p, csrf_token) or await _start_change(p, clients, PHONE, phone_number, form_key)


@router.post(f"{PAGE}/phone/confirm")
async def confirm_phone_change(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)] = "",
    form_key: FormKey = "",
    csrf_token: Csrf = "",
) -> Response:
    return _signed_in(p, csrf_token) or await _confirm_change(p, clients, PHONE, code, form_key)


@router.post(f"{PAGE}/phone/cancel")
async def cancel_phone_change(p: PageDep, csrf_token: Csrf = "") -> Response:
    return _cancel_change(p, PHONE, csrf_token)
