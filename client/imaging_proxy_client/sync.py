"""A small synchronous wrapper of MetadataUpdateClient for scripts (one event loop of its own)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from imaging_proxy_client.client import MetadataUpdateClient, final_state
from imaging_proxy_client.events import Evaluation, ImageSetState, OperationSummary


class SyncMetadataUpdateClient:
    """`with SyncMetadataUpdateClient(endpoint, credentials=...) as client: client.update(...)`.

    Takes MetadataUpdateClient's arguments; not for use inside a running event loop.
    """

    def __init__(self, endpoint: str, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = MetadataUpdateClient(endpoint, **options)

    def __enter__(self) -> SyncMetadataUpdateClient:
        self._runner.run(self._client.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._runner.run(self._client.__aexit__(exc_type, exc, tb))
        finally:
            self._runner.close()

    def update(self, *args: Any, **kwargs: Any) -> ImageSetState:
        """`MetadataUpdateClient.update_and_wait`: the final state."""
        return self._runner.run(self._client.update_and_wait(*args, **kwargs))

    def watch(self, operation_id: str, *, time_limit: float | None = None) -> ImageSetState:
        """Re-attach and wait: the final state."""
        return self._runner.run(
            final_state(self._client.watch(operation_id, time_limit=time_limit))
        )

    def evaluate(self, *args: Any, **kwargs: Any) -> Evaluation:
        """`MetadataUpdateClient.evaluate`."""
        return self._runner.run(self._client.evaluate(*args, **kwargs))

    def list_operations(self, **kwargs: Any) -> tuple[list[OperationSummary], str]:
        """`MetadataUpdateClient.list_operations`."""
        return self._runner.run(self._client.list_operations(**kwargs))

    def get_operation(self, operation_id: str) -> OperationSummary:
        """`MetadataUpdateClient.get_operation`."""
        return self._runner.run(self._client.get_operation(operation_id))

    def cancel_update(self, operation_id: str) -> OperationSummary:
        """`MetadataUpdateClient.cancel_update`."""
        return self._runner.run(self._client.cancel_update(operation_id))

    def approve_update(self, operation_id: str, comment: str = "") -> OperationSummary:
        """`MetadataUpdateClient.approve_update`."""
        return self._runner.run(self._client.approve_update(operation_id, comment))

    def reject_update(self, operation_id: str, comment: str = "") -> OperationSummary:
        """`MetadataUpdateClient.reject_update`."""
        return self._runner.run(self._client.reject_update(operation_id, comment))

    def review_update(self, operation_id: str, comment: str = "") -> OperationSummary:
        """`MetadataUpdateClient.review_update`."""
        return self._runner.run(self._client.review_update(operation_id, comment))
