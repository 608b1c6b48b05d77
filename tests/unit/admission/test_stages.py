"""The fair scheduler: the pure core (flows, queues, fair pick, one bound per principal) and the
shared stages built on it (turns, refusals, deadlines, callers who leave, budget-paced calls)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.admission.buckets import LocalStore
from service.admission.budget import GET_IMAGE_SET_METADATA, Budget
from service.admission.fairness import PRINCIPAL_FULL, FairQueue, Flows
from service.admission.stages import DEADLINE, FairStage, PacedCalls
from service.core.config import BudgetSettings
from service.core.errors import ResourceExhausted
from service.observability.metrics import Metrics

Item = tuple[str, int]


def queue_of(*items: Item) -> FairQueue[Item]:
    queue: FairQueue[Item] = FairQueue(lambda item: item[0])
    for item in items:
        queue.push(item)
    return queue


# --- the pure core ------------------------------------------------------------------------------


def test_a_flood_and_a_single_item_alternate() -> None:
    queue = queue_of(*(("flood", n) for n in range(100)))
    queue.push(("victim", 0))
    served = [queue.pop() for _ in range(4)]
    assert served == [("flood", 0), ("victim", 0), ("flood", 1), ("flood", 2)]


@given(st.lists(st.sampled_from("abcd"), max_size=40))
def test_between_two_turns_of_a_flow_every_other_waiting_flow_gets_one(flows: list[str]) -> None:
    queue = queue_of(*((flow, n) for n, flow in enumerate(flows)))
    served = [item for item in iter(queue.pop, None)]
    assert sorted(served) == sorted((flow, n) for n, flow in enumerate(flows))
    for flow in set(flows):
        turns = [i for i, item in enumerate(served) if item[0] == flow]
        for before, after in itertools.pairwise(turns):
            between = {item[0] for item in served[before + 1 : after]}
            waiting = {item[0] for item in served[after:]} - {flow}
            assert waiting <= between  # nobody still waiting was skipped


def test_removed_and_dropped_items_leave_the_ring() -> None:
    queue = queue_of(("a", 1), ("a", 2), ("b", 1))
    assert queue.remove(("b", 1)) and not queue.remove(("b", 1))
    assert queue.drop(lambda item: item[1] == 2) == [("a", 2)]
    assert (len(queue), queue.flows, queue.count("a")) == (1, 1, 1)


class Counted:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def waiting(self, flow: str) -> int:
        return self.counts.get(flow, 0)


def test_a_principals_bound_counts_its_waiting_work_at_every_stage() -> None:
    flows = Flows(5)
    flows.register(Counted({"flood": 3}))
    flows.register(Counted({"flood": 2, "victim": 4}))
    with pytest.raises(ResourceExhausted) as refused:
        flows.admit("flood", 2.5)
    assert (refused.value.reason, refused.value.retry_after_seconds) == (PRINCIPAL_FULL, 2.5)
    flows.admit("victim", 1.0)  # 4 of 5: not full, and not held back by the flood's count


# --- stages -------------------------------------------------------------------------------------


def stage(concurrency: int = 1, bound: int = 100, margin: float = 0.0) -> FairStage:
    return FairStage("test", concurrency, Flows(bound), Metrics(), deadline_margin_seconds=margin)


async def served_in_order(fair: FairStage, arrivals: list[str]) -> list[str]:
    """Each arrival takes a turn (one at a time, in arrival order); returns who went when."""
    order: list[str] = []

    async def one(flow: str, n: int) -> None:
        async with fair.turn(flow):
            order.append(f"{flow}{n}")

    blocker = asyncio.Event()

    async def hold() -> None:
        async with fair.turn("holder"):
            await blocker.wait()

    holding = asyncio.create_task(hold())
    await asyncio.sleep(0)
    tasks = []
    for n, flow in enumerate(arrivals):
        tasks.append(asyncio.create_task(one(flow, n)))
        await asyncio.sleep(0)  # queued in arrival order
    blocker.set()
    await asyncio.gather(holding, *tasks)
    return order


async def test_a_late_single_request_goes_before_the_floods_earlier_queued_work() -> None:
    order = await served_in_order(stage(), ["flood"] * 20 + ["victim"])
    assert order.index("victim20") == 1  # after one of the flood's, not after all twenty


async def test_with_nobody_waiting_a_turn_is_taken_at_once() -> None:
    fair = stage(concurrency=2)
    async with fair.turn("a"), fair.turn("a"):
        assert fair.waiting("a") == 0


async def test_a_full_principal_is_refused_and_the_others_still_wait_their_turn() -> None:
    fair = stage(bound=3)
    order = []

    async def one(flow: str) -> None:
        async with fair.turn(flow):
            order.append(flow)

    async with fair.turn("flood"):
        waiting = [asyncio.create_task(one("flood")) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted) as refused:
            async with fair.turn("flood"):
                raise AssertionError("a fourth waiting request was let in")
        assert refused.value.reason == PRINCIPAL_FULL
        victim = asyncio.create_task(one("victim"))
        await asyncio.sleep(0)
    await asyncio.gather(*waiting, victim)
    assert order.index("victim") == 1


async def test_a_turn_that_cannot_come_before_the_deadline_is_refused_and_leaves() -> None:
    fair = stage(margin=0.05)
    async with fair.turn("a"):
        with pytest.raises(ResourceExhausted) as refused:
            async with fair.turn("b", deadline=time.time() + 0.1):
                raise AssertionError("served after its deadline")
        assert refused.value.reason == DEADLINE
        assert fair.waiting("b") == 0
    async with fair.turn("b", deadline=time.time() + 10):  # the place came back
        pass


async def test_a_caller_who_leaves_gives_up_its_place_and_a_turn_just_given_passes_on() -> None:
    fair = stage()
    order = []

    async def one(flow: str) -> None:
        async with fair.turn(flow):
            order.append(flow)

    async with fair.turn("holder"):
        leaver, given, last = (asyncio.create_task(one(f)) for f in ("leaver", "given", "last"))
        await asyncio.sleep(0)
        leaver.cancel()
        await asyncio.sleep(0)
        assert fair.waiting("leaver") == 0
    given.cancel()  # the turn has just been handed to `given`: it must reach `last`
    await asyncio.wait_for(last, 1)
    assert order == ["last"]
    async with fair.turn("again"):  # and nothing leaked
        pass


async def test_paced_calls_give_each_budget_slot_to_the_fairest_waiter() -> None:
    settings = BudgetSettings(get_image_set_rate=200.0, get_image_set_burst=1.0, headroom=1.0)
    budget = Budget(settings, "test", LocalStore(settings), Metrics())
    reads = PacedCalls(stage(), budget, GET_IMAGE_SET_METADATA)
    order: list[str] = []

    async def read(flow: str) -> None:
        async def call() -> None:
            order.append(flow)

        await reads.call(flow, call)

    flood = [asyncio.create_task(read("flood")) for _ in range(15)]
    for _ in range(1000):  # until the flood's first reads are made (bounded)
        if len(order) >= 2:
            break
        await asyncio.sleep(0.001)
    made = len(order)
    victim = asyncio.create_task(read("victim"))
    await asyncio.gather(*flood, victim)
    # behind the read holding the stage and one more of the flood's, not behind all 15
    assert order.index("victim") <= made + 2 < 15, order
    assert order.count("flood") == 15
