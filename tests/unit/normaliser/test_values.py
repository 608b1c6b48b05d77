"""Value checks (VM, VR formats), strict JSON loading and the bounded InvalidArgument status."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from pydicom._dicom_dict import DicomDictionary

from service.core.errors import FieldViolation, InvalidArgument
from service.normaliser import jsondoc, values
from service.transport.grpc_errors import to_status

SECRET = "DOE^SECRET"


@pytest.mark.parametrize(
    ("vm", "allowed", "refused"),
    [
        ("1", [1], [0, 2]),
        ("2", [2], [1, 3]),
        ("1-3", [1, 2, 3], [0, 4]),
        ("1-n", [1, 2, 50], [0]),
        ("2-2n", [2, 4, 6], [1, 3, 5]),
        ("3-3n", [3, 6], [4]),
        ("6-n", [6, 7], [5]),
    ],
)
def test_multiplicity(vm: str, allowed: list[int], refused: list[int]) -> None:
    multiplicity = values.Multiplicity.parse(vm)
    assert multiplicity is not None
    assert all(multiplicity.allows(n) for n in allowed)
    assert not any(multiplicity.allows(n) for n in refused)


def test_every_dictionary_vm_parses() -> None:
    unparsed = {
        entry[1] for entry in DicomDictionary.values() if not values.Multiplicity.parse(entry[1])
    }
    assert unparsed == set()


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", "20240229"), ("TM", "235959.999999"), ("DT", "2024"), ("AS", "012W"),
        ("UI", "1.2.840.10008.5.1.4.1.1.2"), ("CS", "ORIGINAL"), ("IS", "-12"), ("DS", "1e-3"),
        ("PN", "Doe^Jane"), ("LO", "x" * 64), ("US", 0), ("US", 65535), ("SS", -32768),
        ("UL", 2**32 - 1), ("SL", -(2**31)), ("FL", 1.5), ("FD", 2), ("UV", 2**64 - 1),
        ("SV", -(2**63)), ("US or SS", -1), ("OB", "AAEC"), ("UT", "x" * 100_000), ("DA", None),
        ("DA", ""), ("CS", ["A", "B"]),
    ],
)  # fmt: skip
def test_fitting_values(vr: str, value: object) -> None:
    assert values.fits_vr(vr, value)


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", "2024-02-29"), ("DA", 20240229), ("TM", "24"), ("DT", "2024-01"), ("AS", "12W"),
        ("UI", "1.2.x"), ("UI", "1." + "2" * 63), ("CS", "lower"), ("CS", "X" * 17),
        ("IS", "1.0"), ("IS", 1), ("DS", "one"), ("DS", 1.5), ("PN", "a=b=c=d"), ("LO", "x" * 65),
        ("SH", "x" * 17), ("US", -1), ("US", 65536), ("US", "1"), ("US", 1.0), ("SS", 32768),
        ("UL", 2**32), ("FL", "1.5"), ("FD", True), ("US or SS", 70000), ("OB", 1),
        ("LT", "x" * 10241), ("CS", ["A", "b"]),
    ],
)  # fmt: skip
def test_nonconforming_values(vr: str, value: object) -> None:
    assert not values.fits_vr(vr, value)
    problem = values.format_problem("Attr", vr, value)
    assert problem.startswith(f"the value of Attr does not fit its VR {vr}")
    assert problem.endswith(values.FORCE_HINT)
    assert repr(value) not in problem and (not isinstance(value, str) or value not in problem)


def test_multiplicity_problems_never_show_the_value() -> None:
    assert values.multiplicity_problem("PatientName", "1", SECRET) == ""
    assert values.multiplicity_problem("PatientName", "1", None) == ""
    for vm, value in (
        ("1", [SECRET]),
        ("2", SECRET),
        ("1-n", SECRET),
        ("3", [SECRET]),
        ("2-n", None),
    ):
        problem = values.multiplicity_problem("X", vm, value)
        assert problem.endswith(values.FORCE_HINT) and SECRET not in problem


# --- strict JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "description", "path"),
    [
        (b"", "must not be empty", ()),
        (b"\xff", "UTF-8", ()),
        (b'"\xed\xa0\x80"', "UTF-8", ()),  # an encoded surrogate is not UTF-8
        (b"NaN", "not JSON numbers", ()),
        (b"[Infinity]", "not JSON numbers", ()),
        (b'{"a": [1e999]}', "finite", ()),
        (b"-1E400", "finite", ()),
        (b"18446744073709551616", "64 bits", ()),
        (b"-9223372036854775809", "64 bits", ()),
        (b"1" * 30, "64 bits", ()),
        (b'{"a": {"b": ["x", "\\udfff"]}}', "lone surrogates", ("a", "b", 1)),
        (b'{"a": {"\\ud800x": 1}}', "keys must not contain lone surrogates", ("a",)),
        (b'"\\ud800\\ud800"', "lone surrogates", ()),
        (b'{"a": 1, "a": 2}', 'duplicate JSON key "a"', ()),
        (b"[" * 100_000, "nested too deeply", ()),
        (b"{", "must be valid JSON", ()),
    ],
)
def test_strict_json_refusals(blob: bytes, description: str, path: jsondoc.Path) -> None:
    with pytest.raises(jsondoc.JsonProblem) as caught:
        jsondoc.load(blob)
    assert description in caught.value.description
    assert caught.value.path == path


def test_strict_json_accepts_what_healthimaging_takes() -> None:
    document = jsondoc.load(
        b'{"a": [1.7976931348623157e308, -9223372036854775808, 18446744073709551615, '
        b'"\\ud83d\\ude00", "\\u00e9", 1e-999]}'
    )
    assert document == {
        "a": [1.7976931348623157e308, -(2**63), 2**64 - 1, "\U0001f600", "\u00e9", 0.0]
    }


# --- a bounded status --------------------------------------------------------------------------


def _long_violations(count: int) -> list[FieldViolation]:
    uid = "1." + "2" * 62
    return [
        FieldViolation(
            f'updates.dicom_updates.updatable_attributes.Study.Series["{uid}{i:02d}"].DICOM.X' * 3,
            "unknown DICOM keyword (keywords are case-sensitive) " * 10,
        )
        for i in range(count)
    ]


def test_invalid_argument_details_are_bounded() -> None:
    error = InvalidArgument(_long_violations(60))
    status = to_status(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(status.SerializeToString()) < 4096
    assert len(error.message) <= 768
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    reported = list(bad_request.field_violations)
    assert 1 <= len(reported) <= 21
    assert all(len(v.field) <= 200 and len(v.description) <= 300 for v in reported)
    assert reported[-1].description == f"and {60 - (len(reported) - 1)} more not shown"
    assert reported[0].field.startswith("updates.dicom_updates.updatable_attributes.Study")


def test_a_few_short_violations_are_reported_whole() -> None:
    violations = [FieldViolation(f"f{i}", "wrong") for i in range(3)]
    error = InvalidArgument(violations)
    assert error.reported == tuple(violations)
    assert error.message == "f0: wrong; f1: wrong; f2: wrong"


def test_counted_but_unkept_violations_are_announced() -> None:
    violations = [FieldViolation(f"f{i}", "wrong") for i in range(25)]
    error = InvalidArgument(violations, total=300)
    assert len(error.reported) == 21
    assert error.reported[-1] == FieldViolation("", "and 280 more not shown")
    assert error.message.endswith("(and 295 more)")


def test_a_long_field_keeps_its_beginning_and_its_attribute() -> None:
    field = "updates.dicom_updates.updatable_attributes" + ".Study" * 100 + ".DICOM.PixelSpacing"
    (shown,) = InvalidArgument([FieldViolation(field, "wrong")]).reported
    assert len(shown.field) == 200
    assert shown.field.startswith("updates.dicom_updates.updatable_attributes.Study")
    assert shown.field.endswith(".DICOM.PixelSpacing") and "..." in shown.field
