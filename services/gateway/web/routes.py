"""The pages people use. Thin: every rule is enforced by the services; pages translate
statuses into messages and forms into RPCs."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import grpc
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2
from temporalio.common import WorkflowIDConflictPolicy

from services.dossier.catalog import therapeutic_area_codes
from services.gateway.clients import Caller, ServiceClients
from services.gateway.dependencies import get_clients
from services.gateway.web.i18n import LANG_COOKIE, SUPPORTED, pick_locale, translator
from services.gateway.web.security import CSRF_COOKIE, CsrfProtection, RateLimiter
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code
from services.shared.settings import Environment
from workflows.case.models import CaseWorkflowInput, case_workflow_id
from workflows.case.workflow import CaseWorkflow

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
LOGIN_COOKIE = "so_login"
COOKIE_CHOICE = "so_cookie_choice"
COOKIE_CHOICE_MAX_AGE = 13 * 30 * 24 * 3600  # CNS-09: consent choices kept 13 months
LOGIN_COOKIE_MAX_AGE = 3 * 3600  # the SMS code's validity
ClientsDep = Annotated[ServiceClients, Depends(get_clients)]

router = APIRouter(include_in_schema=False)


R = TypeVar("R", bound=Response)


class Page:
    """Per-request rendering context: locale, CSRF token, the signed-in caller."""

    def __init__(self, request: Request, caller: Caller | None) -> None:
        self.request = request
        self.caller = caller
        self.locale = pick_locale(
            request.query_params.get("lang") or request.cookies.get(LANG_COOKIE),
            request.headers.get("accept-language"),
        )
        self.t = translator(self.locale)
        self.csrf: CsrfProtection = request.app.state.csrf
        self.csrf_cookie = request.cookies.get(CSRF_COOKIE) or CsrfProtection.new_cookie_value()

    @property
    def secure_cookies(self) -> bool:
        return bool(self.request.app.state.settings.environment is Environment.PRODUCTION)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        response: HTMLResponse = TEMPLATES.TemplateResponse(
            self.request,
            template,
            {
                "locale": self.locale,
                "t": self.t,
                "caller": self.caller,
                "csrf_token": self.csrf.form_token(self.csrf_cookie),
                "show_cookie_banner": COOKIE_CHOICE not in self.request.cookies,
                **context,
            },
            status_code=status,
        )
        return self.finish(response)

    def redirect(self, url: str) -> RedirectResponse:
        return self.finish(RedirectResponse(url, status_code=303))

    def finish(self, response: R) -> R:
        self.set_cookie(response, CSRF_COOKIE, self.csrf_cookie, samesite="strict")
        if self.request.query_params.get("lang") in SUPPORTED:
            self.set_cookie(response, LANG_COOKIE, self.locale, max_age=COOKIE_CHOICE_MAX_AGE)
        return response

    def set_cookie(
        self,
        response: Response,
        name: str,
        value: str,
        max_age: int | None = None,
        samesite: Literal["lax", "strict"] = "lax",
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            secure=self.secure_cookies,
            samesite=samesite,
            path="/",
        )

    def csrf_ok(self, submitted: str | None) -> bool:
        origin = self.request.headers.get("origin")
        if origin and origin != f"{self.request.url.scheme}://{self.request.url.netloc}":
            return False
        return self.csrf.is_valid(self.request.cookies.get(CSRF_COOKIE), submitted)

    def too_many(self, action: str) -> HTMLResponse | None:
        limiter: RateLimiter = self.request.app.state.rate_limiter
        client = self.request.client.host if self.request.client else "unknown"
        wait = limiter.check(action, client)
        if not wait:
            return None
        response = self.render("message.html", status=429, error=self.t("too_many", seconds=wait))
        response.headers["Retry-After"] = str(wait)
        return response

    def forbidden(self) -> HTMLResponse:
        return self.render("message.html", status=403, error="CSRF")


def client_info(request: Request) -> identity_pb2.ClientInfo:
    """Evidence and connection logs (kept 1 year): where the request came from."""
    return identity_pb2.ClientInfo(
        ip_address=request.client.host if request.client else "",
        user_agent=request.headers.get("user-agent", "")[:512],
    )


async def current_caller(request: Request, clients: ClientsDep) -> Caller | None:
    token = request.cookies.get(request.app.state.settings.session_cookie_name, "")
    if not token:
        return None
    try:
        session = await clients.identity.ValidateSession(
            identity_pb2.ValidateSessionRequest(session_token=token), metadata=clients.as_gateway()
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None
        raise
    return Caller(
        account_id=session.account_id,
        role=pb_enum_to_code(identity_pb2.AccountRole, session.role),
        session_id=session.session_id,
        internal_token=session.internal_token,
    )


CallerOrNone = Annotated[Caller | None, Depends(current_caller)]


def page(request: Request, caller: CallerOrNone) -> Page:
    return Page(request, caller)


PageDep = Annotated[Page, Depends(page)]


@router.get("/", response_class=HTMLResponse)
async def home(p: PageDep) -> Response:
    return p.redirect("/dashboard") if p.caller else p.render("home.html")


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
        return p.render("login.html", status=_status(error), error=_login_error(p, error), email=email)
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
        return p.redirect("/login")
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
        return p.redirect("/login")
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
            "login_code.html", status=_status(error), error=message, factor=factor, masked_phone=masked
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
    response = p.redirect("/dashboard?login=1")
    p.set_cookie(response, p.request.app.state.settings.session_cookie_name, verified.session_token)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/login/resend")
async def login_resend(p: PageDep, clients: ClientsDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    attempt = _login_attempt(p)
    if attempt is None:
        return p.redirect("/login")
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
            status=_status(error),
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


@router.get("/signup", response_class=HTMLResponse)
async def signup_form(p: PageDep, clients: ClientsDep) -> Response:
    return p.render("signup.html", form={}, terms_version=await _terms_version(clients, p))


@router.post("/signup")
async def signup_submit(
    p: PageDep,
    clients: ClientsDep,
    email: Annotated[str, Form(max_length=320)],
    phone_number: Annotated[str, Form(max_length=32)],
    password: Annotated[str, Form(max_length=64)],
    declared_age: Annotated[int, Form(ge=0, le=200)],
    accept_terms: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("signup"):
        return limited
    form = {"email": email, "phone_number": phone_number, "declared_age": declared_age}
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
            ),
            metadata=clients.as_gateway(),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
            detail = error.details() or ""
            return p.render("signup.html", status=400, form=form, error=p.t("form_error", detail=detail))
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


def _status(error: grpc.aio.AioRpcError) -> int:
    return {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    }.get(error.code(), 503)


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


def _case_view(case: dossier_pb2.Case) -> dict[str, str]:
    return {
        "case_id": case.case_id,
        "reference": case.case_reference or case.case_id[:8].upper(),
        "therapeutic_area": case.therapeutic_area,
        "status": pb_enum_to_code(dossier_pb2.CaseStatus, case.status),
        "purpose": pb_enum_to_code(dossier_pb2.CasePurpose, case.purpose),
        "created_at": case.created_at.ToDatetime().strftime("%d/%m/%Y"),
    }


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.redirect("/login")
    listed = await clients.dossier.ListCases(
        dossier_pb2.ListCasesRequest(scope=dossier_pb2.CASE_LIST_SCOPE_MINE, page_size=50),
        metadata=p.caller.metadata,
    )
    return p.render(
        "dashboard.html",
        cases=[_case_view(case) for case in listed.cases],
        just_logged_in=p.request.query_params.get("login") == "1",
    )


@router.get("/cases/new", response_class=HTMLResponse)
async def new_case_form(p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.redirect("/login")
    listed = await clients.matching.ListReferentDoctors(
        matching_pb2.ListReferentDoctorsRequest(page_size=100), metadata=p.caller.metadata
    )
    doctors = [
        {
            "doctor_id": d.doctor_id,
            "display_name": d.display_name,
            "areas": ", ".join(p.t("area_" + area) for area in d.therapeutic_areas),
        }
        for d in listed.doctors
    ]
    return p.render(
        "case_new.html",
        areas=sorted(therapeutic_area_codes()),
        doctors=doctors,
        idempotency_key=str(uuid.uuid4()),
    )


@router.post("/cases/new")
async def new_case_submit(
    p: PageDep,
    clients: ClientsDep,
    filing_capacity: Annotated[str, Form(max_length=40)],
    therapeutic_area: Annotated[str, Form(max_length=64)],
    purpose: Annotated[str, Form(max_length=40)],
    doctor_choice_mode: Annotated[str, Form(max_length=20)],
    idempotency_key: Annotated[str, Form(min_length=8, max_length=100)],
    chosen_doctor_ids: Annotated[list[str] | None, Form()] = None,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if p.caller is None:
        return p.redirect("/login")
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("case_submission"):
        return limited
    try:
        created = await clients.dossier.CreateCase(
            dossier_pb2.CreateCaseRequest(
                idempotency_key=idempotency_key,
                filing_capacity=code_to_pb_enum(dossier_pb2.FilingCapacity, filing_capacity),
                therapeutic_area=therapeutic_area,
                purpose=code_to_pb_enum(dossier_pb2.CasePurpose, purpose),
                doctor_choice_mode=code_to_pb_enum(dossier_pb2.DoctorChoiceMode, doctor_choice_mode),
                chosen_doctor_ids=chosen_doctor_ids or [],
            ),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return p.render("message.html", status=400, error=p.t("form_error", detail=error.details() or ""))
    case = created.case
    if clients.temporal is not None:
        await clients.temporal.start_workflow(
            CaseWorkflow.run,
            CaseWorkflowInput(
                case_id=case.case_id,
                therapeutic_area=case.therapeutic_area,
                doctor_choice_mode=doctor_choice_mode,
            ),
            id=case_workflow_id(case.case_id),
            task_queue=clients.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    return p.redirect(f"/cases/{case.case_id}")


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.redirect("/login")
    try:
        response = await clients.dossier.GetCase(
            dossier_pb2.GetCaseRequest(case_id=case_id), metadata=p.caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return p.render("message.html", status=404, error="404")
        raise
    return p.render("case.html", case=_case_view(response.case))
