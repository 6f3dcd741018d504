"""Role checks on the verified caller. Which roles may call what is each service's rule;
this module only offers the vocabulary."""

from __future__ import annotations

from services.shared.auth import Principal, Role
from services.shared.errors import PermissionDenied
from services.shared.grpc_server import require_principal


def require_role(*roles: Role, services: frozenset[str] | None = None) -> Principal:
    """The caller must hold one of `roles`; a service caller must also be in `services`
    when that set is given (e.g. only the worker may report case status)."""
    principal = require_principal()
    if principal.role not in roles:
        raise PermissionDenied("this operation is not allowed for the caller's role")
    if principal.is_service and services is not None and principal.subject not in services:
        raise PermissionDenied("this operation is not allowed for this service")
    return principal
