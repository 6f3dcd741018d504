"""SEC-06: in production, data only goes to the certified health-data host in France. A
process configured with an address or an object-store region outside the approved hosting
refuses to start, naming each setting (never the credentials in it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.dossier.settings import DossierSettings
from services.gateway.settings import GatewaySettings
from services.matching.settings import MatchingSettings
from services.shared.residency import HostingSettings, residency_violations
from services.shared.settings import REPO_ROOT, Environment
from workflows.lifecycle.settings import LifecycleSettings
from workflows.settings import TemporalSettings, WorkerSettings

pytestmark = pytest.mark.req("SEC-06")

PRODUCTION = Environment.PRODUCTION


def test_a_production_service_pointing_outside_the_approved_hosting_refuses_to_start() -> None:
    with pytest.raises(ValidationError) as refused:
        DossierSettings(
            environment=PRODUCTION,
            database_url="postgresql+asyncpg://dossier:s3cret-pw@db.us-east.example.com:5432/dossier",
            s3_endpoint="s3.us-east-1.amazonaws.com",
            s3_region="us-east-1",
            clamd_address="/run/clamav/clamd.ctl",  # a local socket: not an outward address
        )
    message = str(refused.value)
    assert "certified health-data host in France" in message
    assert "database_url: host 'db.us-east.example.com'" in message
    assert "s3_endpoint: host 's3.us-east-1.amazonaws.com'" in message
    assert "s3_region: region 'us-east-1'" in message
    assert "clamd_address" not in message
    assert "s3cret-pw" not in message  # credentials never echoed

    with pytest.raises(ValidationError, match=re.escape("identity_target: host 'auth.example.com'")):
        GatewaySettings(environment=PRODUCTION, identity_target="auth.example.com:443")
    with pytest.raises(ValidationError, match=re.escape("clamd_address: host 'scanner.example.net'")):
        DossierSettings(environment=PRODUCTION, clamd_address="scanner.example.net:3310")


def test_approved_hosts_and_regions_are_accepted_and_development_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SO_HOSTING_APPROVED_HOSTS", '["*.hds.example.fr", "smtp.relay.example.fr"]')
    settings = DossierSettings(
        environment=PRODUCTION,
        database_url="postgresql+asyncpg://dossier@pg-1.hds.example.fr:5432/dossier",
        s3_endpoint="objects.hds.example.fr:443",
        s3_region="eu-west-3",
    )
    assert settings.s3_region == "eu-west-3"
    hosting = HostingSettings()
    assert residency_violations(settings, hosting) == []
    # "*.domain" matches names under the domain, not look-alikes ending with the same letters.
    look_alike = DossierSettings(s3_endpoint="objects.evilhds.example.fr")
    assert residency_violations(look_alike, hosting) == [
        "s3_endpoint: host 'objects.evilhds.example.fr' is not an approved host of the certified hosting"
    ]
    # Development and tests run anywhere (loopback in practice): nothing is refused.
    assert DossierSettings(s3_endpoint="s3.us-east-1.amazonaws.com", s3_region="us-east-1").s3_region


def test_the_service_process_exits_with_the_reason_before_serving() -> None:
    env = {
        **os.environ,
        "MATCHING_ENVIRONMENT": "production",
        "MATCHING_DATABASE_URL": "postgresql+asyncpg://m@db.example.com/matching",
        "MATCHING_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.matching"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"database_url: host 'db.example.com'" in done.stderr
    assert MatchingSettings().environment is not PRODUCTION  # this process is unaffected


def test_workers_and_the_temporal_client_are_held_to_the_same_hosting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The case and lifecycle workers call every service and carry exports; the Temporal
    cluster stores sealed payloads: in production they too stay with the certified host."""
    with pytest.raises(ValidationError, match=re.escape("billing_target: host 'billing.example.com'")):
        WorkerSettings(environment=PRODUCTION, billing_target="billing.example.com:443")
    with pytest.raises(ValidationError, match=re.escape("dossier_target: host 'files.example.net'")):
        LifecycleSettings(environment=PRODUCTION, dossier_target="files.example.net:443")
    with pytest.raises(ValidationError, match=re.escape("address: host 'temporal.example.io'")):
        TemporalSettings(environment=PRODUCTION, address="temporal.example.io:7233")
    # Links in emails point at the portal: a portal outside the host is refused as well.
    with pytest.raises(ValidationError, match=re.escape("portal_base_url: host 'portal.example.com'")):
        WorkerSettings(environment=PRODUCTION, portal_base_url="https://portal.example.com")

    monkeypatch.setenv("SO_HOSTING_APPROVED_HOSTS", '["*.hds.example.fr"]')
    monkeypatch.setenv("WORKER_ENVIRONMENT", "production")
    monkeypatch.setenv("WORKER_BILLING_TARGET", "billing.hds.example.fr:443")
    for name in ("IDENTITY", "DOSSIER", "MATCHING", "NOTIFICATIONS"):
        monkeypatch.setenv(f"WORKER_{name}_TARGET", f"{name.lower()}.hds.example.fr:443")
    monkeypatch.setenv("WORKER_PORTAL_BASE_URL", "https://portail.hds.example.fr")
    assert WorkerSettings().environment is PRODUCTION
    with pytest.raises(ValidationError, match="identity_target"):
        LifecycleSettings(environment=PRODUCTION)  # its defaults are loopback: not approved now
