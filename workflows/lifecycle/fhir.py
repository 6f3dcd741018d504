"""FHIR R4 export: merge the services' bundles, validate with fhir.resources, summarise."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

SUMMARY_LABELS = {
    "Patient": "Your account (identity, contact details, language)",
    "RelatedPerson": "People you act for (minors, wards, mandates)",
    "Consent": "Your consents and accepted terms, with their dates",
    "Invoice": "Your invoices",
    "PaymentReconciliation": "Your payments",
    "DocumentReference": "Documents of your medical file",
    "QuestionnaireResponse": "Your medical questionnaires",
    "Communication": "Messages exchanged with the doctors",
    "DiagnosticReport": "The doctors' reports",
    "PractitionerRole": "Doctors assigned to your requests",
    "Practitioner": "Doctors",
}


def merge_bundles(parts: list[dict[str, Any]], subject_id: str) -> dict[str, Any]:
    """One collection Bundle; a resource present in two parts (same type and id) once."""
    seen: set[tuple[str, str]] = set()
    entries: list[dict[str, Any]] = []
    for part in parts:
        for entry in part.get("entry", []):
            resource = entry["resource"]
            marker = (resource["resourceType"], str(resource.get("id", "")))
            if marker in seen:
                continue
            seen.add(marker)
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": "urn:secondopinion:export", "value": subject_id},
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": entries,
    }


def validate_bundle(bundle: dict[str, Any]) -> Any:
    """Parse with fhir.resources. Its default models are R5; the R4 family ships as R4B
    (R4 plus technical corrections, same resource shapes for what we export), imported
    explicitly. Raises ValueError when the bundle or any resource is invalid."""
    from fhir.resources.R4B.bundle import Bundle

    try:
        return Bundle.model_validate(bundle)
    except Exception as error:  # pydantic.ValidationError and FHIR type errors
        raise ValueError(str(error)[:500]) from error


def readable_summary(bundle: dict[str, Any], not_implemented: list[str]) -> str:
    counts = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
    lines = [
        "Export of your personal data / Export de vos données personnelles",
        f"Generated: {bundle['timestamp']}",
        "",
        "The file fhir-bundle.json holds the same data in the FHIR R4 format, readable by",
        "health software. This summary lists what it contains:",
        "",
    ]
    for resource_type, count in sorted(counts.items()):
        label = SUMMARY_LABELS.get(resource_type, resource_type)
        lines.append(f"- {label}: {count}")
    if not_implemented:
        lines += [
            "",
            "Not included yet (the service holds nothing exportable today): " + ", ".join(not_implemented),
        ]
    return "\n".join(lines) + "\n"
