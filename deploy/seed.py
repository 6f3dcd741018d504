"""Demo data for the dev stack: referent doctors in several areas, partners, a demo patient,
and a demo coordinator granted the health-data and personal-assistant habilitations
through identity's GrantHabilitation (SEC-05, CASE-14), as an operator provisions staff.

Every call carries an idempotency key, so running `make run` again seeds nothing twice.
"""

from __future__ import annotations

from pathlib import Path

from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc

from services.identity.domain.accounts import rpps_is_valid
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel

REPO = Path(__file__).resolve().parents[1]
# The platform's own texts (the specification of this project) when they sit beside the
# repo; a short stand-in otherwise, so a bare clone still starts.
LEGAL_TEXTS = [
    (identity_pb2.LEGAL_TEXT_KIND_TERMS, "000_*.txt", "Conditions générales d'utilisation (démo)."),
    (identity_pb2.LEGAL_TEXT_KIND_PRIVACY_POLICY, "001_*.txt", "Politique de confidentialité (démo)."),
]
DEMO_TERMS_VERSION = "2026.1"
DEMO_PATIENT = {
    "email": "patient@demo.secondopinion.test",
    "phone_number": "+33612345678",
    "password": "Demo-Patient-2026",
}
DEMO_DOCTORS = [
    ("Dr Claire Martin", "claire.martin@demo.secondopinion.test", "+33611111111", "1000000001", ["oncology"]),
    ("Dr Karim Benali", "karim.benali@demo.secondopinion.test", "+33622222222", "1000000002", ["cardiology"]),
    ("Dr Sophie Laurent", "sophie.laurent@demo.secondopinion.test", "+33633333333", "1000000003",
     ["orthopaedics"]),
    ("Dr Paul Nguyen", "paul.nguyen@demo.secondopinion.test", "+33644444444", "1000000004",
     ["neurology", "oncology"]),
]  # fmt: skip
DEMO_COORDINATOR = {
    "email": "coordination@demo.secondopinion.test",
    "phone_number": "+33655555555",
    "display_name": "Camille Coordination",
}
DEMO_COORDINATOR_HABILITATIONS = (
    identity_pb2.HABILITATION_HEALTH_DATA,
    identity_pb2.HABILITATION_PERSONAL_ASSISTANT,
)
DEMO_PARTNERS = [
    ("Mutuelle Démo", billing_pb2.PARTNER_KIND_MUTUELLE),
    ("Assureur Démo", billing_pb2.PARTNER_KIND_INSURER),
]


def with_luhn_digit(base: str) -> str:
    """Complete a 10-digit base into an 11-digit RPPS number identity accepts."""
    return next(base + digit for digit in "0123456789" if rpps_is_valid(base + digit))


async def seed_demo_data(keys_dir: Path, ports: dict[str, int]) -> str:
    tokens = ServiceTokenProvider(TokenSigner.from_keys_dir(keys_dir, "ops"))
    identity_channel = open_channel(f"127.0.0.1:{ports['identity']}", tokens)
    matching_channel = open_channel(f"127.0.0.1:{ports['matching']}", tokens)
    billing_channel = open_channel(f"127.0.0.1:{ports['billing']}", tokens)
    identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
    matching = matching_pb2_grpc.MatchingServiceStub(matching_channel)
    billing = billing_pb2_grpc.BillingServiceStub(billing_channel)
    lines = ["Demo data:"]
    try:
        terms: identity_pb2.LegalText | None = None
        for kind, pattern, fallback in LEGAL_TEXTS:
            found = sorted((REPO.parent / "shared" / "seeds").glob(pattern))
            body = found[0].read_text(encoding="utf-8") if found else fallback
            published = await identity.PublishLegalText(
                identity_pb2.PublishLegalTextRequest(
                    idempotency_key=f"seed:legal:{kind}:{DEMO_TERMS_VERSION}",
                    kind=kind,
                    version=DEMO_TERMS_VERSION,
                    locale="fr",
                    body=body,
                )
            )
            if kind == identity_pb2.LEGAL_TEXT_KIND_TERMS:
                terms = published.text
        lines.append(f"  terms and privacy policy version {DEMO_TERMS_VERSION}")
        for name, email, phone, rpps_base, areas in DEMO_DOCTORS:
            rpps = with_luhn_digit(rpps_base)
            account = await identity.CreateStaffAccount(
                identity_pb2.CreateStaffAccountRequest(
                    idempotency_key=f"seed:staff:{email}",
                    role=identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR,
                    email=email,
                    phone_number=phone,
                    display_name=name,
                    rpps_number=rpps,
                )
            )
            await matching.RegisterReferentDoctor(
                matching_pb2.RegisterReferentDoctorRequest(
                    idempotency_key=f"seed:doctor:{email}",
                    account_id=account.account_id,
                    rpps_number=rpps,
                    display_name=name,
                    therapeutic_areas=areas,
                    languages=["fr", "en"],
                    max_concurrent_cases=5,
                )
            )
            lines.append(f"  referent doctor {name} ({', '.join(areas)})")
        coordinator = await identity.CreateStaffAccount(
            identity_pb2.CreateStaffAccountRequest(
                idempotency_key=f"seed:staff:{DEMO_COORDINATOR['email']}",
                role=identity_pb2.ACCOUNT_ROLE_COORDINATOR,
                email=DEMO_COORDINATOR["email"],
                phone_number=DEMO_COORDINATOR["phone_number"],
                display_name=DEMO_COORDINATOR["display_name"],
            )
        )
        for habilitation in DEMO_COORDINATOR_HABILITATIONS:
            await identity.GrantHabilitation(
                identity_pb2.GrantHabilitationRequest(
                    idempotency_key=f"seed:habilitation:{DEMO_COORDINATOR['email']}:{habilitation}",
                    account_id=coordinator.account_id,
                    habilitation=habilitation,
                    reason="demo coordinator (dev stack seed)",
                )
            )
        lines.append(
            f"  demo coordinator {DEMO_COORDINATOR['email']} (health data, personal assistant); "
            "set a password with 'forgot password' (link in the SMTP catcher, code in make outbox)"
        )
        for partner_name, partner_kind in DEMO_PARTNERS:
            await billing.CreatePartner(
                billing_pb2.CreatePartnerRequest(
                    idempotency_key=f"seed:partner:{partner_name}", name=partner_name, kind=partner_kind
                )
            )
            lines.append(f"  partner {partner_name}")
        # A second `make run` replays this key (the demo account's id comes back, nothing is
        # sent). Without the key's record, SignUp would still succeed for the known email
        # (no enumeration: an id of no account, and an email to the demo patient); the seed
        # does not use the id either way.
        await identity.SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key=f"seed:patient:{DEMO_PATIENT['email']}",
                email=DEMO_PATIENT["email"],
                phone_number=DEMO_PATIENT["phone_number"],
                password=DEMO_PATIENT["password"],
                declared_age=42,
                locale="fr",
                accepted_terms_version=terms.version if terms else "",
                accepted_terms_sha256_hex=terms.sha256_hex if terms else "",
            )
        )
        lines.append(f"  demo patient {DEMO_PATIENT['email']} / {DEMO_PATIENT['password']}")
    finally:
        for channel in (identity_channel, matching_channel, billing_channel):
            await channel.close()
    return "\n".join(lines)
