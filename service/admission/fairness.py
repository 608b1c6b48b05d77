"""Fair queuing, the pure core every shared stage uses: flows, their queues, the fair pick.

Modelled on Kubernetes' API Priority and Fairness: each principal is a flow with its own queue,
and flows are served in turn (round-robin between flows, first come first served within one), so
a flow with a thousand waiting items and a flow with one alternate. `Flows` bounds what one
principal may have waiting across every stage together: past the bound its next request is
refused (RESOURCE_EXHAUSTED + RetryInfo), never anyone else's. No clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from service.core.errors import ResourceExhausted

T = TypeVar("T")

PRINCIPAL_FULL = "PRINCIPAL_FULL"


class FairQueue(Generic[T]):
    """Round-robin across flows, FIFO within one.

    `order()` is the serving order if every item may go; `pop()` takes the first item in that
    order that may go now and moves its flow to the back of the ring.
    """

    def __init__(self, flow_of: Callable[[T], str]) -> None:
        self._flow_of = flow_of
        self._queues: dict[str, deque[T]] = {}
        self._ring: deque[str] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def flows(self) -> int:
        return len(self._ring)

    def count(self, flow: str) -> int:
        return len(self._queues.get(flow, ()))

    def push(self, item: T, *, front: bool = False) -> None:
        flow = self._flow_of(item)
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = deque()
            self._ring.append(flow)
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)
        self._size += 1

    def remove(self, item: T) -> bool:
        """Take `item` out (it keeps its flow's turn); whether it was queued."""
        queue = self._queues.get(self._flow_of(item))
        if queue is None or item not in queue:
            return False
        self._take(item, rotate=False)
        return True

    def items(self) -> Iterator[T]:
        """Every queued item, flow by flow in the ring's order (`first` takes the first that
        may go: the next flow's head, unless it may not go)."""
        for flow in self._ring:
            yield from self._queues[flow]

    def heads(self) -> Iterator[T]:
        """The first item of each flow."""
        for flow in self._ring:
            yield self._queues[flow][0]

    def order(self) -> list[T]:
        queues = [self._queues[flow] for flow in self._ring]
        ordered: list[T] = []
        depth = 0
        while queues:
            queues = [queue for queue in queues if len(queue) > depth]
            ordered.extend(queue[depth] for queue in queues)
            depth += 1
        return ordered

    def position_if_added(self, flow: str) -> int:
        """The position (1 = next) a new item of `flow` would get, in O(flows)."""
        mine = self.count(flow)
        before, passed = 0, False  # a new flow joins the ring at its end
        for other in self._ring:
            theirs = len(self._queues[other])
            before += min(theirs, mine)
            if other == flow:
                passed = True
            elif theirs > mine and not passed:
                before += 1
        return before + 1

    def first(self, may_go: Callable[[T], bool]) -> T | None:
        for item in self.items():
            if may_go(item):
                return item
        return None

    def pop(self, may_go: Callable[[T], bool] = lambda _: True) -> T | None:
        item = self.first(may_go)
        if item is not None:
            self._take(item, rotate=True)
        return item

    def drop(self, doomed: Callable[[T], bool]) -> list[T]:
        """Remove and return the items for which `doomed` holds (their flows keep their turn)."""
        gone = [item for item in self.items() if doomed(item)]
        for item in gone:
            self._take(item, rotate=False)
        return gone

    def _take(self, item: T, *, rotate: bool) -> None:
        flow = self._flow_of(item)
        queue = self._queues[flow]
        queue.remove(item)
        self._size -= 1
        if not queue:
            del self._queues[flow]
            self._ring.remove(flow)
        elif rotate:
            self._ring.remove(flow)
            self._ring.append(flow)


class Waiting(Protocol):
    """A stage that can say how many items of a flow wait in it."""

    def waiting(self, flow: str) -> int: ...


class Flows:
    """One bound on what a principal has waiting, summed over every stage that registered."""

    def __init__(self, max_waiting_per_flow: int) -> None:
        self.max_waiting = max_waiting_per_flow
        self._stages: list[Waiting] = []

    def register(self, stage: Waiting) -> None:
        self._stages.append(stage)

    def waiting(self, flow: str) -> int:
        return sum(stage.waiting(flow) for stage in self._stages)

    def admit(self, flow: str, retry_after_seconds: float) -> None:
        """Refuse (RESOURCE_EXHAUSTED + RetryInfo) when the flow's queues are full together."""
        if self.waiting(flow) >= self.max_waiting:
            raise ResourceExhausted(
                f"this caller already has {self.max_waiting} requests waiting; "
                "retry after the delay",
                retry_after_seconds,
                reason=PRINCIPAL_FULL,
            )
