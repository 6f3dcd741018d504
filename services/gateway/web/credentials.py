"""Lost, stolen or forgotten credentials (ACC-08): the password-reset pages and the
declaration of loss or theft from "Mon compte".

The reset, in three steps, each a page:

1. ``/password-reset``: the email form. Every address gets the same page, status and body
   (no enumeration); identity emails a link only to a known, open account.
2. ``/password-reset?token=...``: the emailed link lands here. The token never stays in a
   URL: it moves at once into a short-lived HttpOnly, SameSite=Strict cookie scoped to
   ``/password-reset`` and the browser goes on (303) to ``/password-reset/new``, with
   ``Referrer-Policy: no-referrer`` so the token leaks nowhere (the pages with forms keep
   the gateway's same-origin policy: under no-referrer a browser posts ``Origin: null``,
   which the CSRF check refuses). Landing does not redeem the
   link (mail scanners prefetch links): a button does, and identity then sends an SMS code
   bound to this reset. That page reads no cookie on GET, so it works even though a click
   from a webmail is a cross-site navigation (Strict cookies are not sent on it); the
   button's POST is same-site and carries them.
3. The SMS code and the new password (twice), checked by identity's policy (ACC-04);
   success unblocks the account, ends every session, and leads to the login page.

Declaring loss or theft blocks the account and ends every session at once (identity);
the person is logged out here and told that the reset above unblocks the account.

Thin, like every page: identity holds the rules. Every POST checks CSRF; requesting a
link, sending the code and completing are rate limited (429 with Retry-After); no token,
code, address or password goes into a URL or a log."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Annotated

import grpc
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.identity.v1 import identity_pb2

from services.gateway.web.page import ClientsDep, Page, PageDep, client_info, new_key

router = APIRouter(include_in_schema=False)

RESET = "/password-reset"
RESET_NEW = "/password-reset/new"
RESET_CODE = "/password-reset/code"
RESET_RESEND = "/password-reset/resend"
LOSS = "/account/credential-loss"
LOSS_DONE = "/account/credential-loss/done"
# The emailed token, between the landing and the click that redeems it.
LINK_COOKIE = "so_reset_link"
LINK_COOKIE_MAX_AGE = 15 * 60
# The reset the SMS code is bound to, and the masked number it went to.
RESET_COOKIE = "so_reset"
RESET_COOKIE_MAX_AGE = 3600
# Budgets per client (security.DEFAULT_LIMITS): asking for a link has its own (each sends
# an email); sending and checking the SMS code cost as much as a login code.
REQUEST_LIMIT = "password_reset"
CODE_LIMIT = "login_code"
# identity's reset tokens are 256-bit URL-safe strings; anything else is not one.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,128}")
KINDS = {
    "loss": identity_pb2.CREDENTIAL_INCIDENT_KIND_LOSS,
    "theft": identity_pb2.CREDENTIAL_INCIDENT_KIND_THEFT,
}
# identity's password-policy refusals (ACC-04), in the person's language.
PASSWORD_RULES = (
    ("8 to 25", "pw_rule_length"),
    ("control characters", "pw_rule_control"),
    ("upper case", "pw_rule_classes"),
    ("too common", "pw_rule_common"),
)
Csrf = Annotated[str, Form()]


# --- helpers ---------------------------------------------------------------------------------


def _set_flow_cookie(p: Page, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        secure=p.secure_cookies,
        samesite="strict",
        path=RESET,
    )


def _drop_flow_cookie(p: Page, response: Response, name: str) -> None:
    response.delete_cookie(name, path=RESET, secure=p.secure_cookies, httponly=True, samesite="strict")


def _encode(*parts: str) -> str:
    # Base64: the masked number holds characters a cookie cannot carry as they are.
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


def _decode(value: str | None, count: int) -> list[str] | None:
    if not value:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(value))
    except ValueError:
        return None
    if not isinstance(parts, list) or len(parts) != count or not all(isinstance(x, str) for x in parts):
        return None
    return parts if parts[0] else None


def _link(p: Page) -> tuple[str, str] | None:
    """The emailed token and the idempotency key of its redemption (a retried click does
    not send a second code)."""
    parts = _decode(p.request.cookies.get(LINK_COOKIE), 2)
    return (parts[0], parts[1]) if parts else None


def _reset(p: Page) -> tuple[str, str] | None:
    """The reset id the SMS code is bound to and the masked number it went to."""
    parts = _decode(p.request.cookies.get(RESET_COOKIE), 2)
    return (parts[0], parts[1]) if parts else None


def _email_form(p: Page, status: int = 200, error: str = "") -> Response:
    return p.render("password_reset.html", status=status, error=error, form_key=new_key())


def _password_refusal(p: Page, detail: str) -> str:
    for fragment, key in PASSWORD_RULES:
        if fragment in detail:
            return p.t(key)
    return p.t("pw_rule_other")


def _minutes_left(stamp: Timestamp) -> int:
    if not stamp.seconds:
        return 60
    left = stamp.ToDatetime(UTC) - datetime.now(UTC)
    return max(1, round(left.total_seconds() / 60))


# --- 1. the email form ------------------------------------------------------------------------


@router.get(RESET, response_class=HTMLResponse)
async def reset_start(p: PageDep) -> Response:
    """The email form; with ``?token=``, the emailed link's landing (the token moves into
    a cookie and out of the URL at once)."""
    token = p.request.query_params.get("token")
    if token is None:
        return _email_form(p)
    response = p.redirect(RESET_NEW)
    # The landing URL holds the token: no referrer from it, ever.
    response.headers["Referrer-Policy"] = "no-referrer"
    # A token of the wrong shape is kept out of the cookie: the next step says the link
    # is not valid, as it does for an unknown one.
    if TOKEN_SHAPE.fullmatch(token):
        _set_flow_cookie(p, response, LINK_COOKIE, _encode(token, new_key()), LINK_COOKIE_MAX_AGE)
    else:
        _drop_flow_cookie(p, response, LINK_COOKIE)
    _drop_flow_cookie(p, response, RESET_COOKIE)  # an earlier reset gives way to this link
    return response


@router.post(RESET)
async def reset_request(
    p: PageDep,
    clients: ClientsDep,
    email: Annotated[str, Form(max_length=320)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many(REQUEST_LIMIT):
        return limited
    minutes = 60
    if email.strip():
        # One submission, one email, even when the form is posted twice.
        request = identity_pb2.RequestPasswordResetRequest(
            idempotency_key=f"password-reset:{form_key or new_key()}",
            email=email.strip(),
            client=client_info(p.request),
        )
        try:
            try:
                answer = await clients.identity.RequestPasswordReset(request, metadata=clients.as_gateway())
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # The same form posted again with another address: a new submission.
                request.idempotency_key = f"password-reset:{new_key()}"
                answer = await clients.identity.RequestPasswordReset(request, metadata=clients.as_gateway())
            minutes = _minutes_left(answer.link_expires_at)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return _identity_says_wait(p)
            # A malformed address gets the same page as any other (no enumeration, and
            # the form already asks for an email address).
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                return p.service_error(error)
    # The same page whatever the address: it is not even repeated.
    return p.render("password_reset_sent.html", minutes=minutes)


# --- 2. the link's page: send the SMS code ---------------------------------------------------


@router.get(RESET_NEW, response_class=HTMLResponse)
async def reset_new(p: PageDep, resent: bool = False) -> Response:
    reset = _reset(p)
    if reset is None:
        return p.render("password_reset_new.html", step="send")
    notice = p.t("pwreset_resent") if resent else ""
    return p.render("password_reset_new.html", step="code", masked_phone=reset[1], notice=notice)


@router.post(RESET_CODE)
async def reset_send_code(p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many(CODE_LIMIT):
        return limited
    link = _link(p)
    if link is None:
        if _reset(p) is not None:  # already sent (a second click, the back button)
            return p.redirect(RESET_NEW)
        return _email_form(p, 410, p.t("pwreset_link_invalid"))
    token, key = link
    try:
        started = await clients.identity.ConfirmPasswordResetLink(
            identity_pb2.ConfirmPasswordResetLinkRequest(
                idempotency_key=f"reset-link:{key}", reset_token=token
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
        ):
            response = _email_form(p, 410, p.t("pwreset_link_invalid"))
            _drop_flow_cookie(p, response, LINK_COOKIE)
            return response
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _identity_says_wait(p)
        return p.service_error(error)
    response = p.redirect(RESET_NEW)
    _keep_reset(p, response, started.password_reset_id, started.masked_phone_number, started.code_expires_at)
    _drop_flow_cookie(p, response, LINK_COOKIE)  # redeemed: it is of no use any more
    return response


def _keep_reset(p: Page, response: Response, reset_id: str, masked: str, code_expires_at: Timestamp) -> None:
    """The reset's cookie, kept a minute past its current code's expiry."""
    max_age = RESET_COOKIE_MAX_AGE
    if code_expires_at.seconds:
        left = (code_expires_at.ToDatetime(UTC) - datetime.now(UTC)).total_seconds()
        max_age = int(min(RESET_COOKIE_MAX_AGE, max(60.0, left + 60)))
    _set_flow_cookie(p, response, RESET_COOKIE, _encode(reset_id, masked), max_age)


def _reset_posted(p: Page, csrf_token: str) -> tuple[str, str] | Response:
    """The reset a form posts to, (id, masked number), or the answer: 403, 429 or 410."""
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many(CODE_LIMIT):
        return limited
    return _reset(p) or _email_form(p, 410, p.t("pwreset_ended"))


def _identity_says_wait(p: Page) -> Response:
    """Identity's own budget ran out (RESOURCE_EXHAUSTED): 429, as for the gateway's."""
    response = p.message(429, error=p.t("too_many", seconds=60))
    response.headers["Retry-After"] = "60"
    return response


def _reset_ended(p: Page) -> Response:
    response = _email_form(p, 410, p.t("pwreset_ended"))
    _drop_flow_cookie(p, response, RESET_COOKIE)
    return response


@router.post(RESET_RESEND)
async def reset_resend_code(p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    """The SMS never came or came too late: another code for the same reset (identity
    bounds how many and how often), rather than starting over from the email."""
    reset = _reset_posted(p, csrf_token)
    if isinstance(reset, Response):
        return reset
    reset_id, masked = reset
    try:
        resent = await clients.identity.ResendPasswordResetCode(
            identity_pb2.ResendPasswordResetCodeRequest(
                idempotency_key=new_key(), password_reset_id=reset_id
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            waiting = p.render(
                "password_reset_new.html",
                status=429,
                error=p.t("pwreset_resend_exhausted"),
                step="code",
                masked_phone=masked,
            )
            waiting.headers["Retry-After"] = "60"
            return waiting
        if error.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
        ):
            return _reset_ended(p)
        return p.service_error(error)
    response = p.redirect(f"{RESET_NEW}?resent=1")
    _keep_reset(p, response, reset_id, masked, resent.code_expires_at)  # the new code lives longer
    return response


# --- 3. the code and the new password --------------------------------------------------------


@router.post(RESET_NEW)
async def reset_complete(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)] = "",
    new_password: Annotated[str, Form(max_length=256)] = "",
    confirm_password: Annotated[str, Form(max_length=256)] = "",
    csrf_token: Csrf = "",
) -> Response:
    reset = _reset_posted(p, csrf_token)
    if isinstance(reset, Response):
        return reset
    reset_id, masked = reset

    def again(message: str, keep_code: bool = False) -> Response:
        return p.render(
            "password_reset_new.html",
            status=400,
            error=message,
            step="code",
            masked_phone=masked,
            code=code.strip() if keep_code else "",
            invalid="password" if keep_code else "code",
        )

    if not new_password or new_password != confirm_password:
        return again(p.t("passwords_differ") if new_password else p.t("pw_rule_length"), keep_code=True)
    try:
        await clients.identity.CompletePasswordReset(
            identity_pb2.CompletePasswordResetRequest(
                password_reset_id=reset_id,
                code=code.strip(),
                new_password=new_password,
                client=client_info(p.request),
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        detail = error.details() or ""
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            if "code" in detail and "password" not in detail:
                return again(p.t("pwreset_code_format"))
            return again(_password_refusal(p, detail), keep_code=True)
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return again(p.t("bad_code"))
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            return again(p.t("locked"))
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return _reset_ended(p)
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _identity_says_wait(p)
        return p.service_error(error)
    response = p.redirect("/login?reset=done")
    _drop_flow_cookie(p, response, RESET_COOKIE)
    _drop_flow_cookie(p, response, LINK_COOKIE)
    # Every session ended with the reset: a session cookie left here is worth nothing.
    response.delete_cookie(p.request.app.state.settings.session_cookie_name, path="/")
    return response


# --- declaring loss or theft from "Mon compte" ----------------------------------------------


def _loss_form(p: Page, status: int = 200, error: str = "", kind: str = "") -> Response:
    return p.render("credential_loss.html", status=status, error=error, kind=kind, form_key=new_key())


@router.get(LOSS, response_class=HTMLResponse)
async def credential_loss_page(p: PageDep) -> Response:
    # No onboarding detour: a person whose credentials leaked blocks them first.
    if p.caller is None:
        return p.to_login()
    return _loss_form(p)


@router.post(LOSS)
async def credential_loss_declare(
    p: PageDep,
    clients: ClientsDep,
    kind: Annotated[str, Form(max_length=16)] = "",
    confirm: Annotated[str, Form(max_length=8)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    caller = p.posted_by(p.caller if p.caller is not None else p.to_login(), csrf_token)
    if isinstance(caller, Response):
        return caller
    if kind not in KINDS:
        return _loss_form(p, 400, p.t("cred_loss_kind_required"))
    if confirm != "yes":
        return _loss_form(p, 400, p.t("cred_loss_confirm_required"), kind=kind)
    try:
        await clients.identity.DeclareCredentialLoss(
            identity_pb2.DeclareCredentialLossRequest(
                idempotency_key=f"credential-loss:{form_key or new_key()}",
                account_id=caller.account_id,
                kind=KINDS[kind],
                client=client_info(p.request),
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    # Blocked, every session ended by identity: this browser forgets its session too.
    response = p.redirect(LOSS_DONE)
    response.delete_cookie(p.request.app.state.settings.session_cookie_name, path="/")
    return response


@router.get(LOSS_DONE, response_class=HTMLResponse)
async def credential_loss_done(p: PageDep) -> Response:
    return p.render("credential_loss_done.html")
