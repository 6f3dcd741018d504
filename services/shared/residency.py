"""Data residency (SEC-06): in production, personal and health data only go to the
certified health-data host in France. Every address a process is configured to send data
to (databases, object stores, other services, SMTP and SMS relays, the PSP, the trace
collector) must be an approved host, and every object-store region an approved region;
otherwise the process refuses to start and names each offending setting (never its
credentials). Development and test run on loopback and are not checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Setting names that hold an outward address (a local socket path is not one).
ADDRESS_SUFFIXES = ("_target", "_endpoint", "_url", "_host", "_address")
# The postal address printed on invoices, not a network one.
NOT_NETWORK = {"platform_address"}


class HostingSettings(BaseSettings):
    """The hosting contract, one list for the whole platform (prefix SO_HOSTING_)."""

    model_config = SettingsConfigDict(env_prefix="SO_HOSTING_", extra="ignore")

    # Host names of the certified host's machines and of processors under contract in the
    # EU (SMTP, SMS, PSP): exact names, or "*.domain" for every name under a domain.
    approved_hosts: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    # Object-store regions located in France at HDS-certified providers (AWS Paris, Scaleway
    # Paris, Azure France Central, Google Paris, OVHcloud Gravelines/Roubaix/Strasbourg).
    approved_regions: list[str] = Field(
        default_factory=lambda: ["eu-west-3", "fr-par", "francecentral", "europe-west9", "gra", "rbx", "sbg"]
    )


class ResidencyViolation(ValueError):
    """A production process is configured to send data outside the approved hosting."""


def _host_of(value: str) -> str | None:
    """The host a setting points at, or None when it holds no network address."""
    value = value.strip()
    if not value or value.startswith(("/", "unix:")):
        return None
    if "://" in value:
        if value.split("://", 1)[0].startswith(("sqlite", "postgresql", "mysql")):
            try:
                return make_url(value).host
            except ArgumentError:
                return value
        return urlsplit(value).hostname
    # host:port (gRPC targets, S3 endpoints given without a scheme)
    return urlsplit(f"//{value}").hostname


def _approved(host: str, approved: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in approved:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    try:
        return ipaddress.ip_address(host).is_loopback and any(a in ("127.0.0.1", "::1") for a in approved)
    except ValueError:
        return False


def residency_violations(settings: BaseModel, hosting: HostingSettings) -> list[str]:
    """Every setting of `settings` that would send data outside the approved hosting."""
    problems: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in NOT_NETWORK or not isinstance(value, str) or not value:
            continue
        if name.endswith("_region"):
            if value not in hosting.approved_regions:
                problems.append(f"{name}: region {value!r} is not an approved region")
            continue
        if not name.endswith(ADDRESS_SUFFIXES) and name not in ("database_url", "address"):
            continue
        host = _host_of(value)
        if host is not None and not _approved(host, hosting.approved_hosts):
            problems.append(f"{name}: host {host!r} is not an approved host of the certified hosting")
    return problems


def enforce_residency(
    settings: BaseModel, *, production: bool, hosting: HostingSettings | None = None
) -> None:
    if not production:
        return
    problems = residency_violations(settings, hosting or HostingSettings())
    if problems:
        raise ResidencyViolation(
            "data must stay with the certified health-data host in France (SO_HOSTING_APPROVED_HOSTS, "
            "SO_HOSTING_APPROVED_REGIONS): " + "; ".join(problems)
        )
