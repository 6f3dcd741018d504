"""`make run`'s dev stack as a person uses it: everything up and healthy, demo data seeded,
the URLs printed, and Ctrl-C leaves no process behind. Run twice on the same state to
show a restart migrates and seeds idempotently."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free port below the kernel's ephemeral range: the dev stack's own children (the
    Temporal server's internal listeners, outgoing connections) take ephemeral ports while
    it starts, and could take one picked there before the service meant for it binds."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randrange(20_000, min(low, 32_768))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


_TAKEN: set[int] = set()


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_devstack(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.devstack"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Press Ctrl-C" in text:
            return process, text
        if process.poll() is not None:
            pytest.fail(f"dev stack exited early:\n{text}")
        time.sleep(0.25)
    process.kill()
    pytest.fail(f"dev stack did not come up:\n{log.read_text(errors='replace')}")


@pytest.mark.temporal
def test_make_run_brings_everything_up_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("temporal", "ui", "identity", "dossier", "matching", "billing",
                                            "notifications", "gateway", "partner_api", "psp_sandbox",
                                            "smtp_catcher", "codec_server")}  # fmt: skip
    env = {
        **os.environ,
        "DEVSTACK_VAR_DIR": str(tmp_path / "var"),
        "DEVSTACK_TEMPORAL_PORT": str(ports["temporal"]),
        "DEVSTACK_TEMPORAL_UI_PORT": str(ports["ui"]),
        "DEVSTACK_GATEWAY_PORT": str(ports["gateway"]),
        **{f"DEVSTACK_{name.upper()}_PORT": str(port) for name, port in ports.items()
           if name not in ("temporal", "ui", "gateway")},
    }  # fmt: skip
    for run in (1, 2):
        process, output = start_devstack(env, tmp_path / f"devstack-{run}.log")
        try:
            assert f"http://127.0.0.1:{ports['gateway']}" in output
            assert f"Temporal Web UI: http://127.0.0.1:{ports['ui']}" in output
            assert "demo patient patient@demo.secondopinion.test" in output
            ready = httpx.get(f"http://127.0.0.1:{ports['gateway']}/readyz", timeout=5)
            assert ready.status_code == 200 and set(ready.json()["services"].values()) == {"SERVING"}
            assert httpx.get(f"http://127.0.0.1:{ports['ui']}/", timeout=5).status_code == 200
            children = children_of(process.pid)
            # temporal, SMTP catcher, PSP sandbox, codec server, clamd, 5 services, two workers, gateway
            assert len(children) == 13, children
        finally:
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert process.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)], "processes left behind"
        for port in ports.values():
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
