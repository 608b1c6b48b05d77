"""The lean path refuses a client it would not be equivalent on; tracing turns it off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import pytest
from aiobotocore.config import AioConfig

import medical_imaging_model
from service.backend import healthimaging
from service.backend.hot_calls import LeanOperation, Unsupported, check_supported

ONE_ATTEMPT = {"mode": "standard", "total_max_attempts": 1}


async def opened(config: AioConfig) -> AsyncIterator[Any]:
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    medical_imaging_model.install(session._session)
    async with session.client("medical-imaging", config=config) as client:
        yield client


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    async for opened_client in opened(AioConfig(retries=ONE_ATTEMPT)):
        yield opened_client


@pytest.mark.parametrize(
    "retries", [{"mode": "standard"}, {"total_max_attempts": 3}, {"max_attempts": 2}]
)
async def test_retries_make_it_unsupported(retries: dict[str, Any]) -> None:
    async for client in opened(AioConfig(retries=retries)):
        with pytest.raises(Unsupported, match="retries"):
            check_supported(client, "GetImageSet")


async def test_one_attempt_is_supported(client: Any) -> None:
    for operation in ("GetImageSet", "UpdateImageSetMetadata"):
        check_supported(client, operation)


async def test_a_handler_it_would_skip_makes_it_unsupported(client: Any) -> None:
    def stamp(**kwargs: Any) -> None: ...

    client.meta.events.register("before-call.medical-imaging.GetImageSet", stamp)
    with pytest.raises(Unsupported, match="before-call"):
        LeanOperation(client, "GetImageSet")
    check_supported(client, "UpdateImageSetMetadata")  # registered for the other one only


async def test_an_operation_with_a_streamed_answer_is_unsupported(client: Any) -> None:
    with pytest.raises(Unsupported, match="GetImageSetMetadata"):
        check_supported(client, "GetImageSetMetadata")


async def test_an_unsupported_client_takes_botocores_path(client: Any) -> None:
    async for retrying in opened(AioConfig(retries={"total_max_attempts": 2})):
        backend = healthimaging.HealthImaging(retrying)
        assert backend._lean == {"UpdateImageSetMetadata": None, "GetImageSet": None}
    assert all(healthimaging.HealthImaging(client)._lean.values())


def test_tracing_instrumentation_turns_the_lean_path_off() -> None:
    from opentelemetry.instrumentation.aiobotocore import AioBotocoreInstrumentor

    assert not healthimaging._traced()
    instrumentor = AioBotocoreInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument()
    try:
        assert healthimaging._traced()
    finally:
        instrumentor.uninstrument()
    assert not healthimaging._traced()
