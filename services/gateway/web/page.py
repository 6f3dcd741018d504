"""Per-request page context shared by every portal: locale, CSRF, the signed-in caller,
cookies with the right flags, rate limits, and how service statuses become messages."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import grpc
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from secondopinion.identity.v1 import identity_pb2

from services.gateway.clients import Caller, ServiceClients
from services.gateway.dependencies import caller_from_session, get_clients
from services.gateway.problems import GRPC_TO_HTTP
from services.gateway.web.i18n import LANG_COOKIE, SUPPORTED, pick_locale, translator
from services.gateway.web.security import CSRF_COOKIE, CsrfProtection, RateLimiter
from services.shared.settings import Environment

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
COOKIE_CHOICE = "so_cookie_choice"
COOKIE_CHOICE_MAX_AGE = 13 * 30 * 24 * 3600  # CNS-09: consent choices kept 13 months
ClientsDep = Annotated[ServiceClients, Depends(get_clients)]
R = TypeVar("R", bound=Response)

# The page a signed-out person asked for (an email's link), taken up again after login: a
# path of ids only (no query: it may hold a token), kept in a cookie so that no link can
# choose where a login ends (no open redirect), for a quarter of an hour.
NEXT_COOKIE = "so_next"
NEXT_MAX_AGE = 900
NEXT_SHAPE = re.compile(r"/(?!/)[A-Za-z0-9/_-]{0,200}")
# Pages a login never returns to: the login itself and the flows around it.
NOT_NEXT = ("/login", "/logout", "/signup", "/password-reset", "/step-up", "/home")

# Where each role lands after login.
HOME_BY_ROLE = {
    "patient": "/dashboard",
    "referent_doctor": "/doctor",
    "coordinator": "/coordination",
    "referring_doctor": "/referrals",
    "dpo": "/dpo",
}


def fmt_date(value: datetime | None, with_time: bool = False) -> str:
    if value is None:
        return ""
    return value.strftime("%d/%m/%Y %H:%M" if with_time else "%d/%m/%Y")


def new_key() -> str:
    return str(uuid.uuid4())


def http_status(error: grpc.aio.AioRpcError) -> int:
    """The API's mapping, plus 501 for a page whose service call is not implemented yet."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return 501
    return GRPC_TO_HTTP.get(error.code(), 503)


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
        # Secure everywhere but on a developer's plain-HTTP loopback (and in tests).
        return self.request.app.state.settings.environment not in (
            Environment.DEVELOPMENT,
            Environment.TEST,
        )

    @property
    def csrf_token(self) -> str:
        return self.csrf.form_token(self.csrf_cookie)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        response: HTMLResponse = TEMPLATES.TemplateResponse(
            self.request,
            template,
            {
                "locale": self.locale,
                "t": self.t,
                "caller": self.caller,
                "csrf_token": self.csrf_token,
                "show_cookie_banner": COOKIE_CHOICE not in self.request.cookies,
                "fmt_date": fmt_date,
                # The emergency warning greets every login (CASE-07), on whatever page it ends.
                "just_logged_in": self.request.query_params.get("login") == "1",
                **context,
            },
            status_code=status,
        )
        return self.finish(response)

    def message(self, status: int, error: str = "", notice: str = "") -> HTMLResponse:
        return self.render("message.html", status=status, error=error, notice=notice)

    def redirect(self, url: str) -> RedirectResponse:
        return self.finish(RedirectResponse(url, status_code=303))

    def to_login(self) -> RedirectResponse:
        """To the login page; a page asked for by GET is where the login will end."""
        response = self.redirect("/login")
        path = self.request.url.path
        if self.request.method == "GET" and NEXT_SHAPE.fullmatch(path) and not path.startswith(NOT_NEXT):
            self.set_cookie(response, NEXT_COOKIE, path, max_age=NEXT_MAX_AGE)
        return response

    def after_login(self) -> str:
        """Where a completed login goes: the page asked for before, with the login flag."""
        path = self.request.cookies.get(NEXT_COOKIE, "")
        if NEXT_SHAPE.fullmatch(path) and path != "/" and not path.startswith(NOT_NEXT):
            return f"{path}?login=1"
        return "/home?login=1"

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

    def origin_ok(self) -> bool:
        origin = self.request.headers.get("origin")
        return not origin or origin == f"{self.request.url.scheme}://{self.request.url.netloc}"

    def csrf_ok(self, submitted: str | None) -> bool:
        if not self.origin_ok():
            return False
        return self.csrf.is_valid(self.request.cookies.get(CSRF_COOKIE), submitted)

    def posted_by(self, caller: Caller | Response, csrf_token: str | None) -> Caller | Response:
        """A form post by the person a route requires: that person, or the answer for
        anyone else (login, their home) and for a post without a valid CSRF token (403)."""
        if isinstance(caller, Response):
            return caller
        return caller if self.csrf_ok(csrf_token) else self.forbidden()

    def too_many(self, action: str) -> HTMLResponse | None:
        limiter: RateLimiter = self.request.app.state.rate_limiter
        client = self.request.client.host if self.request.client else "unknown"
        wait = limiter.check(action, client)
        if not wait:
            return None
        response = self.message(429, error=self.t("too_many", seconds=wait))
        response.headers["Retry-After"] = str(wait)
        return response

    def forbidden(self) -> HTMLResponse:
        return self.message(403, error="CSRF")

    def not_found(self) -> HTMLResponse:
        return self.message(404, error=self.t("not_found"))

    def service_error(self, error: grpc.aio.AioRpcError) -> HTMLResponse:
        """A service refusal as a page: its message when it is meant to be shown."""
        status = http_status(error)
        if status == 404:
            return self.not_found()
        if status == 501:
            return self.message(501, error=self.t("not_available_yet"))
        if status >= 500:
            response = self.message(503, error=self.t("unavailable"))
            response.headers["Retry-After"] = "5"
            return response
        detail = error.details() or ""
        response = self.message(status, error=self.t("form_error", detail=detail))
        if status == 429:
            response.headers["Retry-After"] = "60"
        return response

    def onboarding(self) -> Response | None:
        """Staff enrol their authenticator first (ACC-12); a flagged or provisional password
        is changed before anything else (ACC-10)."""
        if self.caller is None:
            return None
        if self.caller.must_enrol_totp:
            return self.redirect("/account/totp")
        if self.caller.must_change_password:
            return self.redirect("/account/password")
        return None

    def role_home(self) -> str:
        return HOME_BY_ROLE.get(self.caller.role, "/account") if self.caller else "/login"


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
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return None
        raise
    return caller_from_session(session)


CallerOrNone = Annotated[Caller | None, Depends(current_caller)]


def page(request: Request, caller: CallerOrNone) -> Page:
    return Page(request, caller)


PageDep = Annotated[Page, Depends(page)]
