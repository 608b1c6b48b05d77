"""Journal codec: the incremental encoder keeps the at-rest rule and reads what older code wrote."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import asdict, replace
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.model import (
    Decision,
    ImageSetStatus,
    OperationRecord,
    RecordedError,
    State,
    UpdateRequest,
)
from service.journal.codec import RecordEncoder, at_rest, decode, encode, fingerprint
from service.journal.sealing import Sealer

CLEAR = Sealer({})
SEALED = Sealer.from_settings(["k1:" + base64.b64encode(bytes(range(32))).decode()])
MARKER = b"A^B"


def asdict_encode(record: OperationRecord, sealer: Sealer) -> str:
    """The encoder before issue 12, kept verbatim: journals written by it must still resume."""
    document = asdict(at_rest(record))
    del document["epoch"]  # issue 24: kept beside the body; in it only an interrupted submit's
    if not document["inflight_until"]:  # deadline, so records without one read as before
        del document["inflight_until"]
    if not document["cancelled_by"]:  # issue 21's field, written only when set
        del document["cancelled_by"]
    _drop_unset(document, ("approval", "reviewed_by"))  # issue 22's, the same
    _drop_unset(document["request"], _WHY)
    _drop_unset(document["decision"], ("approval", "break_glass"))
    for name in ("updatable_attributes", "removable_attributes"):
        blob = document["request"][name]
        document["request"][name] = base64.b64encode(blob).decode() if blob is not None else None
    text = json.dumps(document, separators=(",", ":"))
    if not sealer.enabled:
        return text
    return json.dumps(sealer.seal(record.id, text.encode()), separators=(",", ":"))


_WHY = ("purpose_of_use", "justification", "ticket", "break_glass")


def _drop_unset(document: dict[str, object], names: tuple[str, ...]) -> None:
    for name in names:
        if not document[name]:
            del document[name]


def asdict_fingerprint(request: UpdateRequest) -> str:
    """The fingerprint before issue 12: records in a journal hold it, retries must match it."""
    fields = asdict(replace(request, idempotency_key=""))
    _drop_unset(fields, _WHY)  # issue 22's fields count only when set
    for name, value in fields.items():
        if isinstance(value, bytes):
            fields[name] = hashlib.sha256(value).hexdigest()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


_floats = st.floats(allow_nan=False)
_blobs = (
    st.none() | st.binary(max_size=64) | st.just(b'{"Patient":{"DICOM":{"PatientName":"A^B"}}}')
)
requests = st.builds(
    UpdateRequest,
    datastore_id=st.text(max_size=8),
    image_set_id=st.text(max_size=8),
    latest_version_id=st.text(max_size=4),
    force=st.booleans(),
    include_study_image_sets=st.booleans(),
    updatable_attributes=_blobs,
    removable_attributes=_blobs,
    revert_to_version_id=st.none() | st.text(max_size=4),
    kind=st.sampled_from([None, "dicom_updates", "revert"]),
    idempotency_key=st.text(max_size=8),
)
statuses = st.none() | st.builds(
    ImageSetStatus,
    st.text(max_size=4),
    st.text(max_size=4),
    st.text(max_size=4),
    st.text(max_size=8),
    st.text(max_size=8),
    st.none() | _floats,
    st.none() | _floats,
    st.text(max_size=8),
)
errors = st.none() | st.builds(
    RecordedError, st.text(max_size=8), st.text(max_size=8), st.text(), _floats, st.text()
)
_texts = st.lists(st.text(max_size=12), max_size=3).map(tuple)
records = st.builds(
    OperationRecord,
    id=st.text(min_size=1, max_size=12),
    principal=st.text(max_size=8),
    auth_method=st.sampled_from(["mtls", "jwt", "dev"]),
    roles=_texts,
    request=requests,
    decision=st.builds(Decision, st.booleans(), _texts, st.text(max_size=8)),
    fingerprint=st.text(max_size=64),
    created_at=_floats,
    deadline=st.none() | _floats,
    state=st.sampled_from(get_args(State)),
    seq=st.integers(min_value=0),
    submitted=statuses,
    last_status=statuses,
    error=errors,
    touched=_texts,
    inflight_until=st.sampled_from([0.0, 1_700_000_000.5]),
    cancelled_by=st.sampled_from(["", "dev:alice"]),
)
progress = st.lists(
    st.fixed_dictionaries(
        {"state": st.sampled_from(get_args(State)), "last_status": statuses, "error": errors}
    ),
    max_size=5,
)


@settings(max_examples=300)
@given(records, st.sampled_from([CLEAR, SEALED]))
def test_a_record_round_trips_at_rest_in_every_state(
    record: OperationRecord, sealer: Sealer
) -> None:
    for body in (encode(record, sealer), RecordEncoder(sealer).encode(record)):
        assert decode(body, record.id, sealer) == at_rest(record)


@settings(max_examples=200)
@given(records, progress)
def test_the_saves_of_an_operation_are_the_text_the_asdict_encoder_wrote(
    record: OperationRecord, changes: list[dict[str, object]]
) -> None:
    encoder = RecordEncoder(CLEAR)
    for step in [{}, *changes]:
        record = replace(record, seq=record.seq + 1, **step)  # type: ignore[arg-type]
        assert encoder.encode(record) == encode(record, CLEAR) == asdict_encode(record, CLEAR)


@settings(max_examples=100)
@given(records, requests, st.sampled_from([CLEAR, SEALED]))
def test_a_changed_fixed_field_is_never_served_from_the_cache(
    record: OperationRecord, other: UpdateRequest, sealer: Sealer
) -> None:
    encoder = RecordEncoder(sealer)
    encoder.encode(replace(record, state="queued"))
    for changed in (
        replace(record, request=other),
        replace(record, principal=record.principal + "x"),
    ):
        assert decode(encoder.encode(changed), record.id, sealer) == at_rest(changed)


@given(records, st.sampled_from([CLEAR, SEALED]))
def test_records_the_asdict_encoder_wrote_decode_to_the_same_record(
    record: OperationRecord, sealer: Sealer
) -> None:
    assert decode(asdict_encode(record, sealer), record.id, sealer) == at_rest(record)


@given(requests)
def test_the_fingerprint_is_the_one_older_records_hold(request: UpdateRequest) -> None:
    assert fingerprint(request) == asdict_fingerprint(request)


def test_a_document_leaves_the_stored_record_once_submitted() -> None:
    encoder = RecordEncoder(CLEAR)
    request = UpdateRequest("d", "i", "1", False, False, MARKER, MARKER, None, "dicom_updates")
    record = OperationRecord(
        "op-1", "svc", "dev", (), request, Decision(True, (), "d-1"), "f", 1.0, None
    )
    states: tuple[State, ...] = get_args(State)
    for state in states:  # in lifecycle order, through one encoder
        body = encoder.encode(replace(record, state=state)).encode()
        kept = state in ("awaiting_approval", "queued", "submitting")
        assert (base64.b64encode(MARKER) in body) == kept


STORED = (  # written by the asdict encoder (before issue 12) for the record below
    '{"id":"op-1","principal":"svc","auth_method":"dev","roles":["metadata-editor"],"request":'
    '{"datastore_id":"dddddddddddddddddddddddddddddddd","image_set_id":'
    '"iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii","latest_version_id":"1","force":false,'
    '"include_study_image_sets":true,"updatable_attributes":'
    '"eyJQYXRpZW50Ijp7IkRJQ09NIjp7IlBhdGllbnROYW1lIjoiQV5CIn19fQ==","removable_attributes":'
    '"eyJTdHVkeSI6e319","revert_to_version_id":null,"kind":"dicom_updates",'
    '"idempotency_key":"key-1"},"decision":{"allow":true,"reasons":["fine"],'
    '"decision_id":"decision-1"},"fingerprint":'
    '"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","created_at":'
    '1700000000.25,"deadline":1700000030.5,"state":"submitting","seq":2,"submitted":'
    '{"datastore_id":"dddddddddddddddddddddddddddddddd","image_set_id":'
    '"iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii","version_id":"2","state":"LOCKED","workflow_status":'
    '"UPDATING","created_at":10.0,"updated_at":11.0,"message":""},"last_status":null,"error":'
    '{"code":"UNAVAILABLE","reason":"BACKEND_THROTTLED","message":"slow down",'
    '"retry_after_seconds":1.5,"aws_code":"ThrottlingException"},"touched":["patient:00100010"]}'
)


def test_a_record_stored_before_the_upgrade_resumes_and_is_stored_the_same() -> None:
    expected = OperationRecord(
        id="op-1",
        principal="svc",
        auth_method="dev",
        roles=("metadata-editor",),
        request=UpdateRequest(
            "d" * 32,
            "i" * 32,
            "1",
            False,
            True,
            b'{"Patient":{"DICOM":{"PatientName":"A^B"}}}',
            b'{"Study":{}}',
            None,
            "dicom_updates",
            "key-1",
        ),
        decision=Decision(True, ("fine",), "decision-1"),
        fingerprint="f" * 64,
        created_at=1700000000.25,
        deadline=1700000030.5,
        state="submitting",
        seq=2,
        submitted=ImageSetStatus("d" * 32, "i" * 32, "2", "LOCKED", "UPDATING", 10.0, 11.0),
        error=RecordedError(
            "UNAVAILABLE", "BACKEND_THROTTLED", "slow down", 1.5, "ThrottlingException"
        ),
        touched=("patient:00100010",),
    )
    assert decode(STORED, "op-1", CLEAR) == expected
    # stored again with the decision id's source (issue 21); an older reader ignores the key
    source = '"decision_id":"decision-1","decision_id_source":"opa"}'
    assert RecordEncoder(CLEAR).encode(expected) == STORED.replace(
        '"decision_id":"decision-1"}', source
    )


def test_a_forgotten_operation_keeps_no_part_and_is_encoded_whole_again() -> None:
    encoder = RecordEncoder(CLEAR)
    request = UpdateRequest("d", "i", "1", False, False, MARKER, None, None, "dicom_updates")
    record = OperationRecord(
        "op-1", "svc", "dev", (), request, Decision(True, (), "d-1"), "f", 1.0, None
    )
    encoder.encode(record)
    with contextlib.suppress(OSError), encoder.forgotten_on_failure("op-1"):
        raise OSError("the write failed")
    assert encoder._heads == {}
    encoder.encode(record)
    with encoder.forgotten_on_failure("op-1"):  # the write went through: kept for the next save
        pass
    assert list(encoder._heads) == ["op-1"]
    encoder.forget("op-1")
    assert encoder._heads == {} and encoder.encode(record) == encode(record, CLEAR)
