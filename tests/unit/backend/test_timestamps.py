"""HealthImaging's timestamps: the proxy's parser gives botocore's instants, faster for epochs."""

from __future__ import annotations

from datetime import UTC

import pytest
from botocore.utils import parse_timestamp
from hypothesis import given
from hypothesis import strategies as st

from service.backend.healthimaging import HealthImaging, parse_epoch_first
from service.core.config import BackendSettings

EPOCHS = st.one_of(
    st.integers(min_value=0, max_value=4_102_444_800),
    st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False),
)


@given(EPOCHS)
def test_an_epoch_number_is_botocores_instant_in_utc(value: float) -> None:
    parsed = parse_epoch_first(value)
    assert parsed.tzinfo is UTC
    assert parsed == parse_timestamp(value)


@pytest.mark.parametrize(
    "text", ["2026-11-24T04:07:35Z", "2026-11-24T04:07:35.123+01:00", "1764000000.5"]
)
def test_other_forms_are_left_to_botocore(text: str) -> None:
    assert parse_epoch_first(text) == parse_timestamp(text)


async def test_the_backend_client_parses_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    async with HealthImaging.open(BackendSettings(endpoint_url="http://127.0.0.1:9")) as backend:
        factory = backend._client._endpoint._response_parser_factory
        parser = factory.create_parser("rest-json")
        assert parser._timestamp_parser is parse_epoch_first
