"""The public async client: `MetadataUpdateClient`, one proxy endpoint, typed events and errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

from imaging_proxy_client import engine
from imaging_proxy_client.credentials import Credentials
from imaging_proxy_client.errors import (
    ClientError,
    DeadlineExceeded,
    UpdateCancelled,
    UpdateNotApproved,
)
from imaging_proxy_client.events import (
    Cancelled,
    Evaluation,
    Expired,
    Finished,
    ImageSetState,
    OperationSummary,
    Rejected,
    UpdateEvent,
    Why,
    evaluation,
    from_proto,
    operation_summary,
)
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

Updates = Mapping[str, Any] | bytes


class MetadataUpdateClient:
    """A client of one proxy endpoint; use it as `async with MetadataUpdateClient(...) as c:`.

    Every call opens its own channel per attempt (a lost connection is re-opened, not reused).
    """

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials | None = None,
        *,
        connect_timeout: float | None = 60.0,
        read_timeout: float | None = 60.0,
        max_attempts: int = 5,
        retry_timeout: float | None = 120.0,
        channel_options: tuple[tuple[str, str | int], ...] = (),
    ) -> None:
        """`endpoint` is host:port; `read_timeout` bounds a silence, `retry_timeout` the time
        spent retrying without progress; a call's own `time_limit` bounds its total time."""
        credentials = credentials or Credentials.insecure()
        self._settings = engine.Settings(
            target=endpoint,
            credentials=credentials.channel_credentials(),
            channel_options=channel_options,
            metadata=credentials.metadata(),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
            retry_timeout=retry_timeout,
        )
        self._state = "new"

    async def __aenter__(self) -> MetadataUpdateClient:
        if self._state != "new":
            raise RuntimeError("a MetadataUpdateClient is entered once")
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"

    def update(
        self,
        datastore_id: str,
        image_set_id: str,
        latest_version_id: str,
        *,
        updatable: Updates | None = None,
        removable: Updates | None = None,
        revert_to_version_id: str | None = None,
        force: bool = False,
        include_study_image_sets: bool = False,
        idempotency_key: str | None = None,
        time_limit: float | None = None,
        why: Why | None = None,
    ) -> AsyncIterator[UpdateEvent]:
        """Submit an update; yield its events, the last one `Finished` (its state is the result),
        or `Rejected`/`Expired` when it waited for an approval that did not come.

        `updatable`/`removable` are HealthImaging's JSON documents (a mapping or its bytes). The
        idempotency key is generated unless given; re-sends and re-attaches are automatic. `why`:
        the purpose of use, justification and ticket (and break-glass) the policy may ask for.
        """
        request = build_request(
            datastore_id,
            image_set_id,
            latest_version_id,
            updatable=updatable,
            removable=removable,
            revert_to_version_id=revert_to_version_id,
            force=force,
            include_study_image_sets=include_study_image_sets,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            why=why,
        )
        tracker = engine.Tracker(idempotency_key=request.idempotency_key)
        return self._follow(request, tracker, time_limit)

    async def update_and_wait(
        self,
        datastore_id: str,
        image_set_id: str,
        latest_version_id: str,
        *,
        updatable: Updates | None = None,
        removable: Updates | None = None,
        revert_to_version_id: str | None = None,
        force: bool = False,
        include_study_image_sets: bool = False,
        idempotency_key: str | None = None,
        time_limit: float | None = None,
        why: Why | None = None,
    ) -> ImageSetState:
        """`update(...)` followed to the end: the final image-set state (check workflow_status)."""
        events = self.update(
            datastore_id,
            image_set_id,
            latest_version_id,
            updatable=updatable,
            removable=removable,
            revert_to_version_id=revert_to_version_id,
            force=force,
            include_study_image_sets=include_study_image_sets,
            idempotency_key=idempotency_key,
            time_limit=time_limit,
            why=why,
        )
        return await final_state(events)

    def watch(
        self, operation_id: str, *, time_limit: float | None = None
    ) -> AsyncIterator[UpdateEvent]:
        """Re-attach to an operation: the events so far (replayed), then the rest to `Finished`."""
        tracker = engine.Tracker(idempotency_key="", operation_id=operation_id)
        return self._follow(None, tracker, time_limit)

    async def evaluate(
        self,
        datastore_id: str,
        image_set_id: str,
        latest_version_id: str,
        *,
        updatable: Updates | None = None,
        removable: Updates | None = None,
        revert_to_version_id: str | None = None,
        force: bool = False,
        include_study_image_sets: bool = False,
        include_policy_input: bool = False,
        time_limit: float | None = None,
        why: Why | None = None,
    ) -> Evaluation:
        """The dry run: what the policy would decide, and the changes it would see;
        `include_policy_input`: also the exact OPA input (PolicyDenied unless allowed)."""
        self._check_open()
        request = build_request(
            datastore_id,
            image_set_id,
            latest_version_id,
            updatable=updatable,
            removable=removable,
            revert_to_version_id=revert_to_version_id,
            force=force,
            include_study_image_sets=include_study_image_sets,
            idempotency_key="",
            why=why,
        )
        request.include_policy_input = include_policy_input
        return evaluation(await self._unary("EvaluateUpdate", request, time_limit))

    async def list_operations(
        self,
        *,
        principal: str = "",
        datastore_id: str = "",
        image_set_id: str = "",
        state: str = "",
        max_results: int = 0,
        next_token: str = "",
        time_limit: float | None = None,
        break_glass: bool = False,
    ) -> tuple[list[OperationSummary], str]:
        """One page of operations (oldest first) and the next page's token ("" on the last).
        Filters left empty match any; without `principal`, everyone's if the policy lets the
        caller see others', else the caller's own. `break_glass`: only those to review."""
        request = metadata_pb2.ListOperationsRequest(
            principal=principal,
            datastore_id=datastore_id,
            image_set_id=image_set_id,
            state=state,
            max_results=max_results,
            next_token=next_token,
            break_glass=break_glass,
        )
        page = await self._unary("ListOperations", request, time_limit)
        return [operation_summary(o) for o in page.operations], page.next_token

    async def operations(self, **filters: Any) -> AsyncIterator[OperationSummary]:
        """Every matching operation, page after page (the filters of `list_operations`)."""
        token = ""
        while True:
            page, token = await self.list_operations(next_token=token, **filters)
            for summary in page:
                yield summary
            if not token:
                return

    async def get_operation(
        self, operation_id: str, *, time_limit: float | None = None
    ) -> OperationSummary:
        request = metadata_pb2.GetOperationRequest(operation_id=operation_id)
        return operation_summary(await self._unary("GetOperation", request, time_limit))

    async def cancel_update(
        self, operation_id: str, *, time_limit: float | None = None
    ) -> OperationSummary:
        """Take back a queued update (state `cancelled`); RpcError FAILED_PRECONDITION (reason
        NOT_CANCELLABLE) once it is submitting or later."""
        request = metadata_pb2.CancelUpdateRequest(operation_id=operation_id)
        return operation_summary(await self._unary("CancelUpdate", request, time_limit))

    async def approve_update(
        self, operation_id: str, comment: str = "", *, time_limit: float | None = None
    ) -> OperationSummary:
        """Approve another's update awaiting approval (when the policy names you as approver);
        the last approval needed lets it queue (state `queued`), or ends it `failed` (ABORTED
        IMAGE_SET_CHANGED, or denied when decided again)."""
        request = metadata_pb2.ApproveUpdateRequest(operation_id=operation_id, comment=comment)
        return operation_summary(await self._unary("ApproveUpdate", request, time_limit))

    async def reject_update(
        self, operation_id: str, comment: str = "", *, time_limit: float | None = None
    ) -> OperationSummary:
        """Reject another's update awaiting approval: it ends `rejected`, nothing written."""
        request = metadata_pb2.RejectUpdateRequest(operation_id=operation_id, comment=comment)
        return operation_summary(await self._unary("RejectUpdate", request, time_limit))

    async def review_update(
        self, operation_id: str, comment: str = "", *, time_limit: float | None = None
    ) -> OperationSummary:
        """Mark another's ended break-glass update reviewed."""
        request = metadata_pb2.ReviewUpdateRequest(operation_id=operation_id, comment=comment)
        return operation_summary(await self._unary("ReviewUpdate", request, time_limit))

    async def _unary(self, method: str, request: Any, time_limit: float | None) -> Any:
        self._check_open()
        try:
            async with asyncio.timeout(time_limit):
                return await engine.unary(self._settings, method, request)
        except TimeoutError:
            raise DeadlineExceeded(time_limit or 0.0, "") from None

    async def _follow(
        self,
        request: metadata_pb2.UpdateImageSetMetadataRequest | None,
        tracker: engine.Tracker,
        time_limit: float | None,
    ) -> AsyncIterator[UpdateEvent]:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if time_limit is None else loop.time() + time_limit
        events = engine.stream_update(self._settings, request, tracker)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise DeadlineExceeded(time_limit or 0.0, tracker.operation_id) from None
                event = raw if not isinstance(raw, metadata_pb2.UpdateEvent) else from_proto(raw)
                if event is not None:
                    yield event
        finally:
            await events.aclose()

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError("use MetadataUpdateClient inside `async with` (and not after it)")


async def final_state(events: AsyncIterator[UpdateEvent]) -> ImageSetState:
    """Drain an update's events; the state its `Finished` carries (UpdateCancelled if it was
    cancelled instead, UpdateNotApproved if it was rejected or its approval expired)."""
    async for event in events:
        if isinstance(event, Finished):
            return event.state
        if isinstance(event, Cancelled):
            raise UpdateCancelled(event.operation_id, event.cancelled_by)
        if isinstance(event, Rejected):
            raise UpdateNotApproved(event.operation_id, rejected_by=event.rejected_by)
        if isinstance(event, Expired):
            raise UpdateNotApproved(event.operation_id, rejected_by="")
    raise ClientError("the stream ended without a finished event")


def build_request(
    datastore_id: str,
    image_set_id: str,
    latest_version_id: str,
    *,
    updatable: Updates | None,
    removable: Updates | None,
    revert_to_version_id: str | None,
    force: bool,
    include_study_image_sets: bool,
    idempotency_key: str,
    why: Why | None = None,
) -> metadata_pb2.UpdateImageSetMetadataRequest:
    """The proxy's request message; validating it is the proxy's job (it says which field)."""
    why = why or Why()
    request = metadata_pb2.UpdateImageSetMetadataRequest(
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        latest_version_id=latest_version_id,
        force=force,
        include_study_image_sets=include_study_image_sets,
        idempotency_key=idempotency_key,
        purpose_of_use=why.purpose_of_use,
        justification=why.justification,
        ticket=why.ticket,
        break_glass=why.break_glass,
    )
    if revert_to_version_id is not None:
        request.revert_to_version_id = revert_to_version_id
    elif updatable is not None or removable is not None:
        request.dicom_updates.SetInParent()
        if updatable is not None:
            request.dicom_updates.updatable_attributes = _blob(updatable)
        if removable is not None:
            request.dicom_updates.removable_attributes = _blob(removable)
    return request


def _blob(document: Updates) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()
