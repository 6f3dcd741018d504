"""Custom search attributes coordinators filter on in the Temporal Web UI.

They are stored in clear: ids, codes and dates only, never a name or health data.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CASE_STATUS = SearchAttributeKey.for_keyword("CaseStatus")
THERAPEUTIC_AREA = SearchAttributeKey.for_keyword("TherapeuticArea")
DEADLINE_AT = SearchAttributeKey.for_datetime("DeadlineAt")
ESCALATED = SearchAttributeKey.for_bool("Escalated")
# A pseudonymous doctor reference (the registry's doctor id), never the doctor's name.
DOCTOR_REF = SearchAttributeKey.for_keyword("DoctorRef")

ALL = (CASE_STATUS, THERAPEUTIC_AREA, DEADLINE_AT, ESCALATED, DOCTOR_REF)
_CLI_TYPES = {"KEYWORD": "Keyword", "DATETIME": "Datetime", "BOOL": "Bool", "TEXT": "Text", "INT": "Int"}


def dev_server_args() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    args: list[str] = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type.name]}"]
    return args
