"""Turn service refusals into non-retryable activity failures; let outages retry."""

from __future__ import annotations

import grpc
from temporalio.exceptions import ApplicationError

NON_RETRYABLE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def as_activity_error(error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    if code in NON_RETRYABLE:
        return ApplicationError(
            f"{code.name}: {error.details()}", type=f"grpc.{code.name}", non_retryable=True
        )
    return error
