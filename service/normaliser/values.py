"""Attribute values against the data dictionary: VM and VR formats, as HealthImaging gates them.

Pure (no I/O). HealthImaging refuses, unless `force` is set, multi-valued attributes and values
incompatible with the attribute's VR (reference/healthimaging-update-semantics.md §2.1); this
module says which rule a value breaks, in words that never contain the value. Formats are
pydicom's validators (`pydicom.valuerep.VALIDATORS`) over the JSON types HealthImaging stores:
numbers for the binary numeric VRs, strings for everything else (DS and IS included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from pydicom.valuerep import VALIDATORS

FORCE_HINT: Final = "requires force (set force=true; needs role metadata-admin)"

INTEGER_VRS: Final = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS: Final = frozenset({"FL", "FD"})
Validator = Callable[[str, object], tuple[bool, str]]
_VM = re.compile(r"(\d+)(?:-(\d+)|-(\d*)n)?")


@dataclass(frozen=True, slots=True)
class Multiplicity:
    """A dictionary VM ("1", "2", "1-3", "1-n", "2-2n") as bounds on the number of values."""

    low: int
    high: int | None  # None: unbounded
    step: int = 1

    @classmethod
    def parse(cls, vm: str) -> Multiplicity | None:
        match = _VM.fullmatch(vm)
        if match is None:
            return None
        low, high, step = match.groups()
        if high is not None:
            return cls(int(low), int(high))
        if step is not None:
            return cls(int(low), None, int(step or 1))
        return cls(int(low), int(low))

    @property
    def single(self) -> bool:
        return self.high == 1

    def allows(self, count: int) -> bool:
        if count < self.low or (self.high is not None and count > self.high):
            return False
        return count % self.step == 0


def multiplicity_problem(name: str, vm: str, value: object) -> str:
    """Why HealthImaging treats the value as multi-valued (force-gated); "" when it does not.

    Multi-valued means a list of values, or an attribute whose dictionary VM allows more than
    one value: HealthImaging stores such attributes as lists and gates them behind force.
    """
    multiplicity = Multiplicity.parse(vm)
    if isinstance(value, list):
        if multiplicity is not None and multiplicity.single:
            return f"{name} takes a single value (VM 1), not a list; {FORCE_HINT}"
        if multiplicity is not None and not multiplicity.allows(len(value)):
            return f"{name} takes VM {vm} values, not {len(value)}; {FORCE_HINT}"
        return f"{name} is multi-valued (given as a list); changing it {FORCE_HINT}"
    if multiplicity is None or multiplicity.single:
        return ""
    if value is not None and not multiplicity.allows(1):
        return f"{name} takes VM {vm} values, not a single one; {FORCE_HINT}"
    return f"{name} is multi-valued (VM {vm}); changing it {FORCE_HINT}"


def fits_vr(vr: str, value: object) -> bool:
    """Whether every value (a scalar or each of a list) has the form `vr` asks for.

    An ambiguous dictionary VR ("US or SS") accepts what any of its options accepts.
    """
    values = value if isinstance(value, list) else [value]
    options = vr.split(" or ")
    return all(any(_fits_one(option, item) for option in options) for item in values)


def _fits_one(vr: str, value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if vr in INTEGER_VRS and not isinstance(value, int):
        return False
    if vr in FLOAT_VRS:
        return isinstance(value, int | float)
    if vr not in INTEGER_VRS and not isinstance(value, str):
        return False  # every other VR is stored as a string (binary ones as base64)
    validator = cast("Validator | None", VALIDATORS.get(vr))  # pydicom's lambdas are untyped
    if validator is None or vr.startswith("O"):  # OB/OW/...: base64 text, not bytes
        return True
    valid, _message = validator(vr, value)  # the message quotes the value: never used
    return valid


def format_problem(name: str, vr: str, value: object) -> str:
    """Why the value does not fit the VR; "" when it does."""
    if fits_vr(vr, value):
        return ""
    shape = "a number" if vr in INTEGER_VRS | FLOAT_VRS else "a string"
    return f"the value of {name} does not fit its VR {vr} (expects {shape} in {vr} form); " + (
        FORCE_HINT
    )
