"""Why an update is asked for (pure): the purpose of use, a justification and a ticket, checked.

The purpose is a code of HL7 v3's PurposeOfUse value set (the reasons of the ActReason code
system FHIR's security labels and IHE's XUA use). The justification is free text a person wrote,
so it may name a patient: the policy sees only its length, the audit its length and a digest,
and only the journal keeps it (sealed). Bounds are checked before the policy is asked.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Final

from service.core.model import UpdateRequest
from service.normaliser.documents import Violations

PURPOSES_OF_USE: Final = frozenset(
    {
        "BTG",  # break the glass
        "CAREMGT",  # care management
        "CLINTRCH",  # clinical trial research
        "COVERAGE",  # coverage under policy or program
        "ETREAT",  # emergency treatment
        "HACCRED",  # health accreditation
        "HCOMPL",  # health compliance
        "HDIRECT",  # directory
        "HLEGAL",  # legal
        "HMARKT",  # marketing
        "HOPERAT",  # healthcare operations
        "HPAYMT",  # healthcare payment
        "HQUALIMP",  # health quality improvement
        "HRESCH",  # healthcare research
        "HSYSADMIN",  # health system administration
        "HTEST",  # test health data
        "PATADMIN",  # patient administration
        "PATRQT",  # patient requested
        "PUBHLTH",  # public health
        "RECORDMGT",  # records management
        "SYSDEV",  # system development
        "TREAT",  # treatment
    }
)
MAX_JUSTIFICATION: Final = 1000
"""Characters of a justification (or of an approver's comment)."""
MAX_TICKET: Final = 128
_TICKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#-]*")


def check_why(request: UpdateRequest, violations: Violations) -> None:
    """The purpose is a known code, the ticket a short reference, the justification bounded
    text; break-glass needs a justification. Messages never repeat what was sent."""
    if request.purpose_of_use and request.purpose_of_use not in PURPOSES_OF_USE:
        violations.add("purpose_of_use", "not an HL7 v3 PurposeOfUse code (TREAT, HOPERAT, ...)")
    if request.ticket and (
        len(request.ticket) > MAX_TICKET or not _TICKET.fullmatch(request.ticket)
    ):
        violations.add(
            "ticket", f"at most {MAX_TICKET} letters, digits and . _ : / # - (a reference)"
        )
    problem = text_problem(request.justification)
    if problem:
        violations.add("justification", problem)
    if request.break_glass and not request.justification.strip():
        violations.add("justification", "required with break_glass")


def text_problem(text: str) -> str:
    """Why a justification or comment is refused ("" = it is fine)."""
    if len(text) > MAX_JUSTIFICATION:
        return f"at most {MAX_JUSTIFICATION} characters"
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return "control characters are not allowed"
    return ""


def digest(text: str) -> str:
    """What the audit keeps of a text that may hold patient data: its SHA-256 (with the length,
    enough to show later that a given text is the one that was sent)."""
    return hashlib.sha256(text.encode()).hexdigest()
