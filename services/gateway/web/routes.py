"""The pages people use. Thin: every rule is enforced by the services; pages translate
statuses into messages and forms into RPCs."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Annotated

import grpc
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response
from secondopinion.identity.v1 import identity_pb2

from services.gateway.clients import ServiceClients
from services.gateway.web.page import (
    COOKIE_CHOICE,
    COOKIE_CHOICE_MAX_AGE,
    NEXT_COOKIE,
    ClientsDep,
    Page,
    PageDep,
    client_info,
    http_status,
)
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code

LOGIN_COOKIE = "so_login"
LOGIN_COOKIE_MAX_AGE = 3 * 3600  # the SMS code's validity

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def home(p: PageDep) -> Response:
    return p.redirect(p.role_home()) if p.caller else p.render("home.html")


@router.post("/cookies")
async def cookie_choice(
    p: PageDep, choice: Annotated[str, Form()], csrf_token: Annotated[str, Form()] = ""
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    response = p.redirect("/")
    p.set_cookie(
        response,
        COOKIE_CHOICE,
        "audience" if choice == "audience" else "necessary",
        max_age=COOKIE_CHOICE_MAX_AGE,
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(p: PageDep) -> Response:
    return p.render("login.html")


@router.post("/login")
async def login_submit(
    p: PageDep,
    clients: ClientsDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=64)],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("login"):
        return limited
    try:
        started = await clients.identity.StartLogin(
            identity_pb2.StartLoginRequest(
                idempotency_key=str(uuid.uuid4()),
                email=email,
                password=password,
                client=client_info(p.request),
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        return p.render("login.html", status=http_status(error), error=_login_error(p, error), email=email)
    factor = (
        pb_enum_to_code(identity_pb2.SecondFactorKind, started.required_factors[0])
        if started.required_factors
        else "sms_code"
    )
    response = p.redirect("/login/code")
    p.set_cookie(
        response,
        LOGIN_COOKIE,
        _login_cookie(started.login_attempt_id, factor, started.masked_phone_number),
        max_age=LOGIN_COOKIE_MAX_AGE,
        samesite="strict",
    )
    return response


def _login_cookie(attempt_id: str, factor: str, masked_phone: str) -> str:
    # Base64: the masked number may hold characters a cookie cannot carry as they are.
    raw = json.dumps([attempt_id, factor, masked_phone]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _login_attempt(p: Page) -> tuple[str, str, str] | None:
    try:
        parts = json.loads(base64.urlsafe_b64decode(p.request.cookies.get(LOGIN_COOKIE, "")))
    except ValueError:
        return None
    if not (
        isinstance(parts, list) and len(parts) == 3 and all(isinstance(x, str) for x in parts) and parts[0]
    ):
        return None
    return parts[0], parts[1], parts[2]


@router.get("/login/code", response_class=HTMLResponse)
async def login_code_form(p: PageDep) -> Response:
    attempt = _login_attempt(p)
    if attempt is None:
        return p.to_login()
    return p.render("login_code.html", factor=attempt[1], masked_phone=attempt[2])


@router.post("/login/code")
async def login_code_submit(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    attempt = _login_attempt(p)
    if attempt is None:
        return p.to_login()
    if limited := p.too_many("login_code"):
        return limited
    attempt_id, factor, masked = attempt
    try:
        verified = await clients.identity.VerifyLoginCode(
            identity_pb2.VerifyLoginCodeRequest(
                login_attempt_id=attempt_id,
                factor=code_to_pb_enum(identity_pb2.SecondFactorKind, factor),
                code=code.strip(),
                client=client_info(p.request),
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        message = (
            p.t("locked") if error.code() == grpc.StatusCode.PERMISSION_DENIED else _login_error(p, error)
        )
        return p.render(
            "login_code.html", status=http_status(error), error=message, factor=factor, masked_phone=masked
        )
    if not verified.completed:
        next_factor = pb_enum_to_code(identity_pb2.SecondFactorKind, verified.remaining_factors[0])
        response = p.redirect("/login/code")
        p.set_cookie(
            response,
            LOGIN_COOKIE,
            _login_cookie(attempt_id, next_factor, ""),
            max_age=LOGIN_COOKIE_MAX_AGE,
            samesite="strict",
        )
        return response
    # The emergency warning greets every login (CASE-07), whatever the portal.
    if verified.must_enrol_totp:
        target = "/account/totp"
    elif verified.must_change_password:
        target = "/account/password?forced=1"
    else:
        target = p.after_login()
    response = p.redirect(target)
    p.set_cookie(response, p.request.app.state.settings.session_cookie_name, verified.session_token)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    if target.endswith("?login=1"):  # the page asked for is reached: forget it
        response.delete_cookie(NEXT_COOKIE, path="/")
    return response


@router.post("/login/resend")
async def login_resend(p: PageDep, clients: ClientsDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    attempt = _login_attempt(p)
    if attempt is None:
        return p.to_login()
    if limited := p.too_many("login_code"):
        return limited
    try:
        await clients.identity.ResendLoginCode(
            identity_pb2.ResendLoginCodeRequest(
                idempotency_key=str(uuid.uuid4()), login_attempt_id=attempt[0]
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        return p.render(
            "login_code.html",
            status=http_status(error),
            error=_login_error(p, error),
            factor=attempt[1],
            masked_phone=attempt[2],
        )
    return p.redirect("/login/code")


@router.post("/logout")
async def logout(p: PageDep, clients: ClientsDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if p.caller:
        await clients.identity.Logout(
            identity_pb2.LogoutRequest(idempotency_key=f"logout-{p.caller.session_id}"),
            metadata=p.caller.metadata,
        )
    response = p.redirect("/")
    response.delete_cookie(p.request.app.state.settings.session_cookie_name, path="/")
    return response


# A referral invitation's token (ACC-15): identity's URL-safe random string.
INVITATION_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,128}")


@router.get("/signup", response_class=HTMLResponse)
async def signup_form(p: PageDep, clients: ClientsDep) -> Response:
    """With ``?invitation=`` (a referring doctor's invitation, ACC-15), the token rides in
    a hidden field of the form, never in a later URL; only the origin leaves this page as
    a referrer (not no-referrer: the form's post would then carry ``Origin: null``)."""
    invitation = p.request.query_params.get("invitation", "")
    form = {"invitation": invitation} if INVITATION_SHAPE.fullmatch(invitation) else {}
    response = p.render("signup.html", form=form, terms_version=await _terms_version(clients, p))
    if invitation:
        response.headers["Referrer-Policy"] = "strict-origin"
    return response


@router.post("/signup")
async def signup_submit(
    p: PageDep,
    clients: ClientsDep,
    email: Annotated[str, Form(max_length=320)],
    phone_number: Annotated[str, Form(max_length=32)],
    password: Annotated[str, Form(max_length=64)],
    declared_age: Annotated[int, Form(ge=0, le=200)],
    accept_terms: Annotated[str, Form()] = "",
    invitation: Annotated[str, Form(max_length=128)] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("signup"):
        return limited
    form = {
        "email": email,
        "phone_number": phone_number,
        "declared_age": declared_age,
        "invitation": invitation,
    }
    terms = await _current_terms(clients, p)
    if accept_terms != "yes":
        return p.render(
            "signup.html", status=400, form=form, error=p.t("form_error", detail=p.t("accept_terms"))
        )
    try:
        await clients.identity.SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key=str(uuid.uuid4()),
                email=email,
                phone_number=phone_number,
                password=password,
                declared_age=declared_age,
                accepted_terms_version=terms[0] if terms else "",
                accepted_terms_sha256_hex=terms[1] if terms else "",
                locale=p.locale,
                client=client_info(p.request),
                referral_token=invitation,
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            detail = error.details() or ""
            if "referral_token" in detail:
                # A stale invitation: the person may still sign up, without it.
                form["invitation"] = ""
                return p.render("signup.html", status=400, form=form, error=p.t("signup_invitation_invalid"))
            return p.render("signup.html", status=400, form=form, error=p.t("form_error", detail=detail))
        # No account enumeration: an email that already has an account gets the same page
        # as a new one (identity answers it as a success and emails the owner; an
        # ALREADY_EXISTS, should one still come, is not shown either).
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    return p.render("login.html", notice=p.t("signed_up"), email=email)


async def _current_terms(clients: ServiceClients, p: Page) -> tuple[str, str] | None:
    try:
        response = await clients.identity.GetCurrentLegalText(
            identity_pb2.GetCurrentLegalTextRequest(kind=identity_pb2.LEGAL_TEXT_KIND_TERMS, locale=p.locale),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
            return None
        raise
    text = response.text
    return str(getattr(text, "version", "")), str(getattr(text, "sha256_hex", ""))


async def _terms_version(clients: ServiceClients, p: Page) -> str:
    terms = await _current_terms(clients, p)
    return terms[0] if terms else ""


def _login_error(p: Page, error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        return p.t("bad_credentials") if "code" not in (error.details() or "") else p.t("bad_code")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return p.t("locked")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return p.t("too_many", seconds=60)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return error.details() or p.t("bad_code")
    return p.t("unavailable")


@router.get("/home", response_class=HTMLResponse)
async def home_after_login(p: PageDep) -> Response:
    """Sends each role to its portal, carrying the login flag for the emergency warning."""
    if p.caller is None:
        return p.to_login()
    suffix = "?login=1" if p.request.query_params.get("login") == "1" else ""
    return p.redirect(p.role_home() + suffix)
