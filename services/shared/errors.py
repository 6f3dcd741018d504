"""Errors a service raises to refuse a call; the gRPC bootstrap turns them into statuses.

Messages must be safe to show to the caller: they say what is wrong with the request,
never quote personal or health data.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    status = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(ServiceError):
    """A concurrent change won; the caller may retry."""

    status = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """A dependency (PSP, object store, a file the operator provides) did not answer; the
    caller may retry, ideally with the same idempotency key."""

    status = grpc.StatusCode.UNAVAILABLE
