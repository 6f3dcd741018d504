"""Style and safety rules of the platform's gRPC contracts (protos/secondopinion/**).

The protos are compiled with grpc_tools.protoc into a FileDescriptorSet that keeps the
source info (comments), then checked against the buf style guide as this project applies
it, plus the contract-level privacy rules: notifications cannot carry free text (SEC-08)
and nothing reachable from the partner API can carry health data (BIL-10).
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"

# Package name -> the one service its main file declares.
SERVICES = {
    "identity": "IdentityService",
    "notifications": "NotificationsService",
    "dossier": "DossierService",
    "matching": "MatchingService",
    "billing": "BillingService",
    "partner": "PartnerService",
}

FDP = descriptor_pb2.FieldDescriptorProto
TIMESTAMP = ".google.protobuf.Timestamp"
DURATION = ".google.protobuf.Duration"

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto
# field numbers, as used in SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


# ---------------------------------------------------------------------------------------
# Building and walking the descriptors
# ---------------------------------------------------------------------------------------


def _proto_files() -> list[str]:
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


@dataclass(frozen=True)
class Contracts:
    """The compiled contracts (a wrapper so that failure reports stay short)."""

    fds: descriptor_pb2.FileDescriptorSet

    def __repr__(self) -> str:
        return f"<Contracts: {len(self.fds.file)} files>"


@pytest.fixture(scope="module")
def contracts(tmp_path_factory: pytest.TempPathFactory) -> Contracts:
    out = tmp_path_factory.mktemp("descriptors") / "contracts.binpb"
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            "--include_source_info",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *_proto_files(),
        ]
    )
    assert code == 0, "protoc failed to compile the contracts"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return Contracts(fds)


@dataclass(frozen=True)
class Element:
    """One commentable element of a proto file."""

    kind: str  # message, field, oneof, enum, enum value, service, rpc
    name: str  # fully qualified, for messages
    file: str
    path: tuple[int, ...]


def _own_files(fds: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in fds.file if f.name.startswith("secondopinion/")]


def _walk_enum(
    enum: descriptor_pb2.EnumDescriptorProto, prefix: str, file: str, path: tuple[int, ...]
) -> Iterator[Element]:
    full = f"{prefix}.{enum.name}"
    yield Element("enum", full, file, path)
    for i, value in enumerate(enum.value):
        yield Element("enum value", f"{full}.{value.name}", file, (*path, _ENUM_VALUE, i))


def _walk_message(
    message: descriptor_pb2.DescriptorProto, prefix: str, file: str, path: tuple[int, ...]
) -> Iterator[Element]:
    full = f"{prefix}.{message.name}"
    if message.options.map_entry:
        return  # synthesized by protoc for map fields; cannot carry comments
    yield Element("message", full, file, path)
    for i, field in enumerate(message.field):
        yield Element("field", f"{full}.{field.name}", file, (*path, _MSG_FIELD, i))
    for i, oneof in enumerate(message.oneof_decl):
        yield Element("oneof", f"{full}.{oneof.name}", file, (*path, _MSG_ONEOF, i))
    for i, nested in enumerate(message.nested_type):
        yield from _walk_message(nested, full, file, (*path, _MSG_NESTED, i))
    for i, enum in enumerate(message.enum_type):
        yield from _walk_enum(enum, full, file, (*path, _MSG_ENUM, i))


def _elements(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    for i, message in enumerate(proto.message_type):
        yield from _walk_message(message, proto.package, proto.name, (_FILE_MESSAGE, i))
    for i, enum in enumerate(proto.enum_type):
        yield from _walk_enum(enum, proto.package, proto.name, (_FILE_ENUM, i))
    for i, service in enumerate(proto.service):
        full = f"{proto.package}.{service.name}"
        yield Element("service", full, proto.name, (_FILE_SERVICE, i))
        for j, method in enumerate(service.method):
            yield Element("rpc", f"{full}.{method.name}", proto.name, (_FILE_SERVICE, i, _SERVICE_METHOD, j))


def _all_messages(
    fds: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message of every file (imports included), keyed '.pkg.Name'."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def add(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        full = f"{prefix}.{message.name}"
        found[full] = message
        for nested in message.nested_type:
            add(nested, full)

    for proto in fds.file:
        for message in proto.message_type:
            add(message, f".{proto.package}")
    return found


def _all_enums(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def add_from(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        full = f"{prefix}.{message.name}"
        for enum in message.enum_type:
            found[f"{full}.{enum.name}"] = enum
        for nested in message.nested_type:
            add_from(nested, full)

    for proto in fds.file:
        for enum in proto.enum_type:
            found[f".{proto.package}.{enum.name}"] = enum
        for message in proto.message_type:
            add_from(message, f".{proto.package}")
    return found


def _services(
    fds: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.ServiceDescriptorProto]]:
    for proto in _own_files(fds):
        for service in proto.service:
            yield proto, service


def _service(
    fds: descriptor_pb2.FileDescriptorSet, name: str
) -> tuple[str, descriptor_pb2.ServiceDescriptorProto]:
    for proto, service in _services(fds):
        if service.name == name:
            return proto.package, service
    raise AssertionError(f"service {name} not found")


def _reachable(
    fds: descriptor_pb2.FileDescriptorSet, roots: list[str]
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Messages reachable from the given '.pkg.Name' roots through message-typed fields."""
    messages = _all_messages(fds)
    seen: dict[str, descriptor_pb2.DescriptorProto] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = messages[name]
        for field in messages[name].field:
            if field.type == FDP.TYPE_MESSAGE:
                todo.append(field.type_name)
    return seen


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _own_messages(
    fds: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for name, message in _all_messages(fds).items():
        if name.startswith(".secondopinion."):
            yield name, message


# ---------------------------------------------------------------------------------------
# Layout and naming
# ---------------------------------------------------------------------------------------


def test_every_service_package_has_its_main_file(contracts: Contracts) -> None:
    files = {f.name: f for f in _own_files(contracts.fds)}
    for package, service in SERVICES.items():
        main = files.get(f"secondopinion/{package}/v1/{package}.proto")
        assert main is not None, f"missing protos/secondopinion/{package}/v1/{package}.proto"
        assert [s.name for s in main.service] == [service]
    declared = sorted(s.name for _, s in _services(contracts.fds))
    assert declared == sorted(SERVICES.values()), "only the six platform services are declared"


def test_package_and_path_match(contracts: Contracts) -> None:
    for proto in _own_files(contracts.fds):
        match = re.fullmatch(r"secondopinion/([a-z]+)/v1/[a-z_]+\.proto", proto.name)
        assert match, f"{proto.name}: not under secondopinion/<pkg>/v1/"
        package = match.group(1)
        assert package in SERVICES, f"{proto.name}: unknown package {package}"
        assert proto.package == f"secondopinion.{package}.v1", proto.name
        assert proto.syntax == "proto3", proto.name


def test_names_follow_the_style_guide(contracts: Contracts) -> None:
    pascal = re.compile(r"[A-Z][A-Za-z0-9]*")
    lower_snake = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
    upper_snake = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
    for name, message in _own_messages(contracts.fds):
        assert pascal.fullmatch(message.name), name
        for field in message.field:
            assert lower_snake.fullmatch(field.name), f"{name}.{field.name}"
        for oneof in message.oneof_decl:
            assert lower_snake.fullmatch(oneof.name), f"{name}.{oneof.name}"
    for name, enum in _all_enums(contracts.fds).items():
        if not name.startswith(".secondopinion."):
            continue
        assert pascal.fullmatch(enum.name), name
        for value in enum.value:
            assert upper_snake.fullmatch(value.name), f"{name}.{value.name}"
    for _, service in _services(contracts.fds):
        assert service.name.endswith("Service"), service.name
        for method in service.method:
            assert pascal.fullmatch(method.name), f"{service.name}.{method.name}"


def test_every_rpc_has_its_own_request_and_response(contracts: Contracts) -> None:
    uses: Counter[str] = Counter()
    for proto, service in _services(contracts.fds):
        prefix = f".{proto.package}"
        for method in service.method:
            where = f"{service.name}.{method.name}"
            assert method.input_type == f"{prefix}.{method.name}Request", where
            assert method.output_type == f"{prefix}.{method.name}Response", where
            uses[method.input_type] += 1
            uses[method.output_type] += 1
    reused = sorted(name for name, count in uses.items() if count != 1)
    assert not reused, f"request/response messages used by more than one RPC: {reused}"
    # ...and never embedded in another message either.
    embedded = sorted(
        f"{name}.{field.name}"
        for name, message in _own_messages(contracts.fds)
        for field in message.field
        if field.type_name in uses
    )
    assert not embedded, f"request/response messages used as field types: {embedded}"


def test_every_element_has_a_leading_comment(contracts: Contracts) -> None:
    missing: list[str] = []
    for proto in _own_files(contracts.fds):
        comments = {
            tuple(location.path): location.leading_comments.strip()
            for location in proto.source_code_info.location
        }
        for element in _elements(proto):
            if not comments.get(element.path):
                missing.append(f"{element.file}: {element.kind} {element.name}")
    assert not missing, "elements without a leading comment:\n" + "\n".join(missing)


def test_enum_zero_values_are_unspecified(contracts: Contracts) -> None:
    for name, enum in _all_enums(contracts.fds).items():
        if not name.startswith(".secondopinion."):
            continue
        prefix = _upper_snake(enum.name)
        assert enum.value, name
        assert enum.value[0].number == 0, name
        assert enum.value[0].name == f"{prefix}_UNSPECIFIED", name
        assert sum(1 for v in enum.value if v.number == 0) == 1, name


def test_enum_values_are_prefixed_with_the_enum_name(contracts: Contracts) -> None:
    for name, enum in _all_enums(contracts.fds).items():
        if not name.startswith(".secondopinion."):
            continue
        prefix = _upper_snake(enum.name) + "_"
        for value in enum.value:
            assert value.name.startswith(prefix) and len(value.name) > len(prefix), f"{name}.{value.name}"


# ---------------------------------------------------------------------------------------
# Field conventions
# ---------------------------------------------------------------------------------------

# RPCs that change state but deliberately take no idempotency key, and why.
NOT_IDEMPOTENT_BY_DESIGN = {
    "IdentityService.VerifyLoginCode": "consumes a single-use code; a retry must fail",
    "IdentityService.VerifyStepUp": "consumes a single-use code; a retry must fail",
    "IdentityService.CompletePasswordReset": "consumes a single-use code; a retry must fail",
    "IdentityService.ConfirmTotpEnrolment": "recovery codes are shown once, stored hashed",
    "IdentityService.RegenerateRecoveryCodes": "recovery codes are shown once, stored hashed",
    "IdentityService.ValidateSession": "only moves the session's idle clock",
    "BillingService.CreatePartnerApiKey": "the API key is shown once, stored hashed",
}
# Read-only RPCs, recognised by their verb.
READ_ONLY_VERBS = ("Get", "List", "Check", "Download", "Quote", "Propose")
READ_ONLY_RPCS = {
    "IdentityService.VerifyEvidenceChain",
    "DossierService.VerifyAccessLogChain",
    # Reads of archived data change nothing but the access log (each read is logged).
    "IdentityService.ReadArchivedSubject",
    "DossierService.ReadArchivedSubject",
    "BillingService.ReadArchivedSubject",
}


def test_side_effecting_rpcs_take_an_idempotency_key(contracts: Contracts) -> None:
    messages = _all_messages(contracts.fds)
    missing: list[str] = []
    for _, service in _services(contracts.fds):
        for method in service.method:
            qualified = f"{service.name}.{method.name}"
            fields = {f.name: f for f in messages[method.input_type].field}
            key = fields.get("idempotency_key")
            if key is not None:
                assert key.number == 1 and key.type == FDP.TYPE_STRING, qualified
                assert key.label != FDP.LABEL_REPEATED, qualified
                assert qualified not in NOT_IDEMPOTENT_BY_DESIGN, f"{qualified} has a key after all"
                continue
            if method.name.startswith(READ_ONLY_VERBS) or qualified in READ_ONLY_RPCS:
                continue
            if qualified not in NOT_IDEMPOTENT_BY_DESIGN:
                missing.append(qualified)
    assert not missing, f"side-effecting RPCs without idempotency_key = 1: {missing}"


def test_time_and_money_fields_are_typed(contracts: Contracts) -> None:
    for name, message in _own_messages(contracts.fds):
        field_names = {f.name: f for f in message.field}
        for field in message.field:
            where = f"{name}.{field.name}"
            if field.name.endswith("_at"):
                assert field.type_name == TIMESTAMP, f"{where} must be a google.protobuf.Timestamp"
            if field.type in (FDP.TYPE_STRING, FDP.TYPE_INT64, FDP.TYPE_INT32):
                assert not field.name.endswith(("_time", "_date_time", "_seconds", "_ms")), (
                    f"{where}: use google.protobuf.Timestamp / Duration"
                )
            if field.name.endswith("_cents"):
                assert field.type == FDP.TYPE_INT64, f"{where} must be int64"
                currency = field_names.get("currency")
                assert currency is not None and currency.type == FDP.TYPE_STRING, (
                    f"{name} has an amount but no string currency (ISO 4217)"
                )


def test_catalog_values_are_string_codes(contracts: Contracts) -> None:
    catalog_fields = {
        "therapeutic_area",
        "therapeutic_areas",
        "covered_therapeutic_areas",
        "sub_specialty",
        "sub_specialties",
        "language",
        "languages",
        "locale",
    }
    for name, message in _own_messages(contracts.fds):
        for field in message.field:
            if field.name in catalog_fields and field.type != FDP.TYPE_MESSAGE:
                assert field.type == FDP.TYPE_STRING, (
                    f"{name}.{field.name} must be a catalog string code, not an enum"
                )


# Fields that hold secrets: they must carry [debug_redact = true] so log and trace
# interceptors can drop them.
SECRET_FIELD_NAMES = {
    "password",
    "current_password",
    "new_password",
    "one_time_code",
    "session_token",
    "internal_token",
    "reset_token",
    "referral_token",
    "provisioning_uri",
    "recovery_codes",
    "api_key",
}
# Messages whose `code` field is a public catalog code rather than a secret.
CATALOG_CODE_MESSAGES = {
    ".secondopinion.matching.v1.TherapeuticArea",
    ".secondopinion.matching.v1.SubSpecialty",
}


def test_secret_fields_are_redacted(contracts: Contracts) -> None:
    for name, message in _own_messages(contracts.fds):
        for field in message.field:
            if field.type not in (FDP.TYPE_STRING, FDP.TYPE_BYTES):
                continue
            secret = field.name in SECRET_FIELD_NAMES or (
                field.name == "code" and name not in CATALOG_CODE_MESSAGES
            )
            if secret:
                assert field.options.debug_redact, f"{name}.{field.name} must be [debug_redact = true]"


# ---------------------------------------------------------------------------------------
# Contract lock: names and fields other teams build on (issue 2 brief)
# ---------------------------------------------------------------------------------------

S, I32, I64, B = FDP.TYPE_STRING, FDP.TYPE_INT32, FDP.TYPE_INT64, FDP.TYPE_BOOL
REQUIRED_FIELDS: dict[str, dict[str, object]] = {
    "identity.v1.SignUpRequest": {
        "idempotency_key": S,
        "email": S,
        "phone_number": S,
        "password": S,
        "declared_age": I32,
        "accepted_terms_version": S,
        "locale": S,
    },
    "identity.v1.SignUpResponse": {"account_id": S},
    "identity.v1.CreateStaffAccountRequest": {
        "idempotency_key": S,
        "role": ".secondopinion.identity.v1.AccountRole",
        "email": S,
        "phone_number": S,
        "display_name": S,
        "rpps_number": S,
    },
    "identity.v1.CreateStaffAccountResponse": {"account_id": S},
    "identity.v1.GetAccountRequest": {"account_id": S},
    "identity.v1.GetAccountResponse": {"account": ".secondopinion.identity.v1.Account"},
    "identity.v1.ValidateSessionRequest": {"session_token": S},
    "identity.v1.ValidateSessionResponse": {
        "account_id": S,
        "role": ".secondopinion.identity.v1.AccountRole",
        "session_id": S,
        "internal_token": S,
        "internal_token_expires_at": TIMESTAMP,
    },
    "identity.v1.Account": {
        "account_id": S,
        "role": ".secondopinion.identity.v1.AccountRole",
        "email": S,
        "phone_number": S,
        "display_name": S,
        "status": ".secondopinion.identity.v1.AccountStatus",
        "created_at": TIMESTAMP,
    },
    "dossier.v1.CreateCaseRequest": {
        "idempotency_key": S,
        "filing_capacity": ".secondopinion.dossier.v1.FilingCapacity",
        "therapeutic_area": S,
        "purpose": ".secondopinion.dossier.v1.CasePurpose",
        "doctor_choice_mode": ".secondopinion.dossier.v1.DoctorChoiceMode",
        "chosen_doctor_ids": S,
        "beneficiary_id": S,
    },
    "dossier.v1.CreateCaseResponse": {"case": ".secondopinion.dossier.v1.Case"},
    "dossier.v1.GetCaseRequest": {"case_id": S},
    "dossier.v1.GetCaseResponse": {"case": ".secondopinion.dossier.v1.Case"},
    "dossier.v1.UpdateCaseStatusRequest": {
        "idempotency_key": S,
        "case_id": S,
        "status": ".secondopinion.dossier.v1.CaseStatus",
    },
    "dossier.v1.UpdateCaseStatusResponse": {"case": ".secondopinion.dossier.v1.Case"},
    "dossier.v1.Case": {
        "case_id": S,
        "filer_account_id": S,
        "filing_capacity": ".secondopinion.dossier.v1.FilingCapacity",
        "beneficiary_id": S,
        "therapeutic_area": S,
        "purpose": ".secondopinion.dossier.v1.CasePurpose",
        "doctor_choice_mode": ".secondopinion.dossier.v1.DoctorChoiceMode",
        "chosen_doctor_ids": S,
        "assigned_doctor_ids": S,
        "status": ".secondopinion.dossier.v1.CaseStatus",
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    },
    "matching.v1.RegisterReferentDoctorRequest": {
        "idempotency_key": S,
        "account_id": S,
        "rpps_number": S,
        "display_name": S,
        "therapeutic_areas": S,
        "languages": S,
        "max_concurrent_cases": I32,
    },
    "matching.v1.RegisterReferentDoctorResponse": {"doctor": ".secondopinion.matching.v1.ReferentDoctor"},
    "matching.v1.ListReferentDoctorsRequest": {"therapeutic_area": S, "page_size": I32, "page_token": S},
    "matching.v1.ListReferentDoctorsResponse": {
        "doctors": ".secondopinion.matching.v1.ReferentDoctor",
        "next_page_token": S,
    },
    "matching.v1.ReferentDoctor": {
        "doctor_id": S,
        "account_id": S,
        "rpps_number": S,
        "display_name": S,
        "therapeutic_areas": S,
        "languages": S,
        "max_concurrent_cases": I32,
        "current_load": I32,
    },
    "billing.v1.CreatePartnerRequest": {
        "idempotency_key": S,
        "name": S,
        "kind": ".secondopinion.billing.v1.PartnerKind",
    },
    "billing.v1.CreatePartnerResponse": {"partner": ".secondopinion.billing.v1.Partner"},
    "billing.v1.ListPartnersRequest": {"page_size": I32, "page_token": S},
    "billing.v1.ListPartnersResponse": {
        "partners": ".secondopinion.billing.v1.Partner",
        "next_page_token": S,
    },
    "billing.v1.Partner": {
        "partner_id": S,
        "name": S,
        "kind": ".secondopinion.billing.v1.PartnerKind",
        "created_at": TIMESTAMP,
    },
    "notifications.v1.SendNotificationRequest": {
        "idempotency_key": S,
        "template": ".secondopinion.notifications.v1.NotificationTemplate",
        "channel": ".secondopinion.notifications.v1.Channel",
        "phone_number": S,
        "email": S,
        "locale": S,
        "variables": ".secondopinion.notifications.v1.TemplateVariables",
    },
    "notifications.v1.SendNotificationResponse": {
        "notification_id": S,
        "status": ".secondopinion.notifications.v1.DeliveryStatus",
    },
    "notifications.v1.GetNotificationStatusRequest": {"notification_id": S},
    "notifications.v1.GetNotificationStatusResponse": {
        "notification_id": S,
        "status": ".secondopinion.notifications.v1.DeliveryStatus",
        "attempts": I32,
        "updated_at": TIMESTAMP,
    },
}
REQUIRED_ENUM_VALUES = {
    "identity.v1.AccountRole": [
        "PATIENT",
        "REFERRING_DOCTOR",
        "REFERENT_DOCTOR",
        "COORDINATOR",
        "DPO",
        "ADMINISTRATOR",
        "PARTNER_USER",
        "SERVICE",
    ],
    "identity.v1.AccountStatus": ["ACTIVE", "LOCKED", "BLOCKED", "CLOSED"],
    "dossier.v1.FilingCapacity": [
        "SELF",
        "LEGAL_REPRESENTATIVE_OF_MINOR",
        "LEGAL_REPRESENTATIVE_OF_WARD",
        "MANDATED_PERSON",
    ],
    "dossier.v1.CasePurpose": ["SECOND_OPINION", "OPINION_BEFORE_INDEMNITY_CLAIM"],
    "dossier.v1.DoctorChoiceMode": ["PATIENT_CHOSEN", "PLATFORM_CHOSEN"],
    "dossier.v1.CaseStatus": [
        "DRAFT",
        "SUBMITTED",
        "AWAITING_PAYMENT",
        "AWAITING_ASSIGNMENT",
        "IN_REVIEW",
        "AWAITING_INFORMATION",
        "ESCALATED",
        "REPORT_DELIVERED",
        "CLOSED",
        "CANCELLED",
    ],
    "billing.v1.PartnerKind": [
        "INSURER",
        "MUTUELLE",
        "PROVIDENT_INSTITUTION",
        "PROFESSIONAL_BRANCH",
        "EMPLOYER",
    ],
    "notifications.v1.Channel": ["SMS", "EMAIL"],
    "notifications.v1.DeliveryStatus": ["QUEUED", "SENT", "FAILED", "BOUNCED"],
    "notifications.v1.NotificationTemplate": [
        "LOGIN_CODE",
        "PASSWORD_RESET",
        "ACCOUNT_LOCKED",
        "BREACH_NOTICE",
        "REPORT_AVAILABLE",
        "EXPECTED_DELAY",
        "PAYMENT_SUMMARY",
        "INVOICE_AVAILABLE",
        "DOCTOR_DEADLINE_REMINDER",
        "COORDINATOR_ESCALATION",
        "TERMS_UPDATED",
        "REFERRAL_INVITATION",
        "SATISFACTION_SURVEY",
    ],
}
REQUIRED_RPCS = {
    "IdentityService": ["SignUp", "CreateStaffAccount", "GetAccount", "ValidateSession"],
    "DossierService": ["CreateCase", "GetCase", "UpdateCaseStatus"],
    "MatchingService": ["RegisterReferentDoctor", "ListReferentDoctors"],
    "BillingService": ["CreatePartner", "ListPartners"],
    "NotificationsService": ["SendNotification", "GetNotificationStatus"],
}


def test_contract_names_other_teams_rely_on(contracts: Contracts) -> None:
    messages = _all_messages(contracts.fds)
    enums = _all_enums(contracts.fds)
    for service_name, rpcs in REQUIRED_RPCS.items():
        _, service = _service(contracts.fds, service_name)
        assert set(rpcs) <= {m.name for m in service.method}, service_name
    for message_name, expected in REQUIRED_FIELDS.items():
        message = messages[f".secondopinion.{message_name}"]
        fields = {f.name: f for f in message.field}
        for field_name, expected_type in expected.items():
            field = fields.get(field_name)
            assert field is not None, f"{message_name}.{field_name} is missing"
            actual: object = field.type_name if field.type_name else field.type
            assert actual == expected_type, f"{message_name}.{field_name}: {actual} != {expected_type}"
    recipient = messages[".secondopinion.notifications.v1.SendNotificationRequest"]
    assert [o.name for o in recipient.oneof_decl] == ["recipient"]
    for enum_name, values in REQUIRED_ENUM_VALUES.items():
        enum = enums[f".secondopinion.{enum_name}"]
        prefix = _upper_snake(enum.name)
        names = [v.name for v in enum.value]
        assert names[: len(values) + 1] == [f"{prefix}_UNSPECIFIED"] + [f"{prefix}_{v}" for v in values], (
            enum_name
        )


# ---------------------------------------------------------------------------------------
# Privacy rules carried by the contracts
# ---------------------------------------------------------------------------------------

FREE_TEXT_NAMES = {"body", "text", "content", "message", "html"}
# Every string or bytes field reachable from a NotificationsService request, reviewed:
# each one is validated by the server against a strict format.
NOTIFICATION_REQUEST_STRINGS = {
    "idempotency_key",  # opaque key
    "notification_id",  # UUID
    "page_token",  # opaque token
    "phone_number",  # E.164
    "email",  # address syntax
    "locale",  # "fr" / "en"
    "first_name",  # letters, spaces, hyphens, apostrophes; 50 characters at most
    "link",  # must start with the platform's public base URL
    "currency",  # ISO 4217
    "invoice_number",  # billing's numbering pattern
    "one_time_code",  # exactly 6 digits
}
TEMPLATE_VARIABLES = {
    "first_name",
    "link",
    "date",
    "amount_cents",
    "currency",
    "invoice_number",
    "one_time_code",
}


def _notification_request_messages(
    fds: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    _, service = _service(fds, "NotificationsService")
    return _reachable(fds, [m.input_type for m in service.method])


@pytest.mark.req("SEC-08")
def test_notification_requests_have_no_free_text_field(contracts: Contracts) -> None:
    offending = [
        f"{name}.{field.name}"
        for name, message in _notification_request_messages(contracts.fds).items()
        for field in message.field
        if field.type in (FDP.TYPE_STRING, FDP.TYPE_BYTES)
        and (field.name in FREE_TEXT_NAMES or FREE_TEXT_NAMES.intersection(field.name.split("_")))
    ]
    assert not offending, f"free-text fields in notification requests: {offending}"


@pytest.mark.req("SEC-08")
def test_notification_requests_only_carry_reviewed_values(contracts: Contracts) -> None:
    messages = _notification_request_messages(contracts.fds)
    for name, message in messages.items():
        if not name.startswith(".secondopinion."):
            continue
        for field in message.field:
            if field.type in (FDP.TYPE_STRING, FDP.TYPE_BYTES):
                assert field.name in NOTIFICATION_REQUEST_STRINGS, (
                    f"unreviewed string field {name}.{field.name}"
                )
            if field.type == FDP.TYPE_MESSAGE:
                own = field.type_name.startswith(".secondopinion.notifications.v1.")
                assert own or field.type_name == TIMESTAMP, f"{name}.{field.name}: {field.type_name}"
    variables = messages[".secondopinion.notifications.v1.TemplateVariables"]
    assert {f.name for f in variables.field} == TEMPLATE_VARIABLES


# Every scalar field name reachable from PartnerService, reviewed: none can hold health
# data (no names, no therapeutic area, no purpose, no free text). Enums and timestamps are
# allowed as such; any other message type must belong to the partner package and is
# walked in turn.
PARTNER_SCALAR_ALLOWLIST = {
    "idempotency_key",  # opaque key
    "page_size",
    "page_token",
    "next_page_token",
    "include_ended",
    "agreement_id",  # UUID
    "quota",
    "used_count",
    "code_id",  # UUID
    "code",  # the coverage code the partner itself issued
    "count",
    "max_uses",
    "use_count",
    "case_reference",  # opaque, non-guessable reference
    "amount_cents",
    "credited_amount_cents",
    "total_amount_cents",
    "currency",  # ISO 4217
    "invoice_id",  # UUID
    "invoice_number",
    "invoice_numbers",
    "corrects_invoice_number",
    "sha256_hex",
    "chunk",  # bytes of the partner's Factur-X invoice (lines name the service only)
    "suppressed",
    "minimum_response_count",
    "response_count",
    "average_score",
    "score",
    "would_recommend_count",
}
PARTNER_ALLOWED_MESSAGE_TYPES = {TIMESTAMP}


@pytest.mark.req("BIL-10")
def test_partner_api_cannot_carry_health_data(contracts: Contracts) -> None:
    package, service = _service(contracts.fds, "PartnerService")
    assert package == "secondopinion.partner.v1"
    roots = [m.input_type for m in service.method] + [m.output_type for m in service.method]
    reachable = _reachable(contracts.fds, roots)
    enums = _all_enums(contracts.fds)
    checked = 0
    for name, message in reachable.items():
        if name in PARTNER_ALLOWED_MESSAGE_TYPES:
            continue
        assert name.startswith(".secondopinion.partner.v1."), f"foreign message type reachable: {name}"
        assert not message.options.map_entry, f"map fields are not allowed: {name}"
        for field in message.field:
            where = f"{name}.{field.name}"
            if field.type == FDP.TYPE_MESSAGE:
                allowed = field.type_name in PARTNER_ALLOWED_MESSAGE_TYPES or field.type_name.startswith(
                    ".secondopinion.partner.v1."
                )
                assert allowed, f"{where}: message type {field.type_name} not allowed"
            elif field.type == FDP.TYPE_ENUM:
                assert field.type_name.startswith(".secondopinion.partner.v1."), where
                assert field.type_name in enums, where
            else:
                assert field.name in PARTNER_SCALAR_ALLOWLIST, f"{where} is not in the reviewed allowlist"
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------------------------------
# Generated code
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_generated_modules_import(package: str) -> None:
    messages = importlib.import_module(f"secondopinion.{package}.v1.{package}_pb2")
    grpc_module = importlib.import_module(f"secondopinion.{package}.v1.{package}_pb2_grpc")
    service = SERVICES[package]
    assert service in messages.DESCRIPTOR.services_by_name
    assert hasattr(grpc_module, f"{service}Stub")
    assert hasattr(grpc_module, f"{service}Servicer")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")
