"""schemathesis against the gateway's own OpenAPI document, on the live server, as a
signed-in patient: no answer is a 5xx and every status is documented for its operation.

The run happens in a subprocess (the schemathesis CLI) so the event loop keeps serving
the platform while it sends its requests; it is bounded (few examples, fixed seed)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.gateway.support import Portal

MAX_EXAMPLES = 12
SEED = 20260
# No 5xx, no undocumented status; and what is documented is what is sent.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.req("SEC-08")
async def test_the_api_answers_only_documented_statuses_and_never_a_5xx(
    portal: Portal, tmp_path: Path
) -> None:
    patient = await portal.patient("fuzzed.patient@example.org")
    # A case of their own, so ids in the schema's examples are not all unknown.
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases",
            json={
                "filing_capacity": "self",
                "therapeutic_area": "cardiology",
                "purpose": "second_opinion",
                "doctor_choice_mode": "platform_chosen",
            },
            headers={**patient.bearer, "Idempotency-Key": "fuzz-seed-case"},
        )
        assert created.status_code == 201, created.text
    report = tmp_path / "schemathesis.json"
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{portal.url}/api/openapi.json",
        "--checks", CHECKS,
        "--header", f"Authorization: Bearer {patient.session}",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--no-shrink",
        "--phases", "examples,coverage,fuzzing", "--workers", "2",
        "--generation-database", "none", "--request-timeout", "10",
        "--report", "json", "--report-json-path", str(report),
        "--no-color", "--output-truncate", "true",
        cwd=tmp_path,  # its own state folder stays out of the checkout
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert report.exists(), text[-2000:]
    summary = json.loads(report.read_text())
    assert summary, text[-2000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"] > 10, text[-2000:]
    assert summary["test_cases"]["with_failures"] == 0 and not summary["failures"], text[-6000:]
