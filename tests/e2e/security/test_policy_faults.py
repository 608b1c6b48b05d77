"""Issue 7, OPA faults: killed, restarted, slow, and answering garbage. The proxy fails closed.

Real processes only: OPA is really killed and really restarted; "slow" is a real OPA behind a
small relay that holds decision requests back; garbage comes from a real OPA whose decision rule
is replaced through OPA's policy API. Each test first shows the same path working, so a refusal
cannot come from broken wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest

from devstack import processes, servers
from service.transport.health import LIVENESS, READINESS
from service.transport.server import SERVICE_NAME
from tests.e2e.secure_stack import (
    RPC_TIMEOUT,
    TEST_SETTINGS,
    Proxy,
    SecureStack,
    folder,
    service_stub,
    start_opa,
    start_proxy,
)
from tests.e2e.security.calls import (
    DEV_ADMIN,
    NOT_SERVING,
    SERVING,
    assert_policy_unavailable,
    assert_updated,
    dev_allows,
    dev_refusal,
    events_of,
    health_becomes,
    serving_status,
    study,
    update,
)
from tests.e2e.security.relay import Relay, serve

pytestmark = pytest.mark.e2e

OPA_TIMEOUT = 0.3
HEALTH_INTERVAL = float(TEST_SETTINGS["opa"]["health_interval_seconds"])
HEALTH_READINGS = 10
"""Readings over five probe intervals: more than the failures readiness needs to go down."""
DECISION = "package imaging.update\n\ndecision := "
ALLOW_ALL = DECISION + '{"allow": true, "reasons": []}\n'


@dataclass
class Faults:
    """Two proxies with their own OPA: one to kill, one behind the relay with a policy to swap."""

    killable: Proxy
    killable_opa_port: int
    opas: list[processes.Child]
    """Every OPA process started; the killable proxy's current one is last."""
    relayed: Proxy
    relay: Relay
    relayed_opa_url: str

    @property
    def killable_opa(self) -> processes.Child:
        return self.opas[-1]

    def restart_opa(self) -> None:
        """Start OPA again on the same port, as a supervisor would."""
        directory = self.killable_opa.log_path.parent
        self.opas.append(servers.start_opa(directory, self.killable_opa_port))

    def put_policy(self, module: str) -> None:
        """Replace the relayed OPA's decision module through OPA's REST API."""
        request = urllib.request.Request(
            f"{self.relayed_opa_url}/v1/policies/decision", data=module.encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200


@pytest.fixture(scope="module")
async def faults(secure_stack: SecureStack) -> AsyncIterator[Faults]:
    base = secure_stack.directory / "faults"
    backend = ["--insecure-dev-identity", "--endpoint-url", secure_stack.backend.emulator_url]
    killable_port, relayed_port = processes.free_port(), processes.free_port()
    relayed_opa_url = f"http://127.0.0.1:{relayed_port}"
    async with contextlib.AsyncExitStack() as cleanup:
        opas = [start_opa(base / "relayed-opa", relayed_port, paths=[folder(base / "no-policies")])]
        opas.append(servers.start_opa(folder(base / "killable-opa"), killable_port))
        cleanup.callback(stop_all, opas)
        relay = Relay(relayed_opa_url, await cleanup.enter_async_context(aiohttp.ClientSession()))
        relay_port = await serve(relay, cleanup)
        killable_url = f"http://127.0.0.1:{killable_port}"
        killable = start_proxy(base / "killable", [*backend, "--opa-url", killable_url])
        cleanup.callback(killable.child.stop)
        relayed_args = ["--opa-url", f"http://127.0.0.1:{relay_port}"]
        relayed = start_proxy(
            base / "relayed", [*backend, *relayed_args, "--opa-timeout", str(OPA_TIMEOUT)]
        )
        cleanup.callback(relayed.child.stop)
        yield Faults(killable, killable_port, opas, relayed, relay, relayed_opa_url)


async def health_of(proxy: Proxy, *services: str) -> list[int]:
    """The proxy's health status for each of `services`, in order."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        return [await serving_status(channel, service) for service in services]


def stop_all(children: list[processes.Child]) -> None:
    for child in children:
        child.stop()


# --- OPA killed and restarted --------------------------------------------------------------------


async def test_killed_opa_refuses_updates_until_it_is_back(
    secure_stack: SecureStack, faults: Faults
) -> None:
    image_set = secure_stack.take_image_set()
    assert await dev_allows(faults.killable)
    await health_becomes(faults.killable, SERVING, READINESS)

    faults.killable_opa.process.kill()
    faults.killable_opa.process.wait()

    assert_policy_unavailable(await dev_refusal(faults.killable))
    assert_policy_unavailable(await dev_refusal(faults.killable, image_set))
    await health_becomes(faults.killable, NOT_SERVING, READINESS)
    await health_becomes(faults.killable, NOT_SERVING, SERVICE_NAME)
    assert await health_of(faults.killable, "", LIVENESS) == [SERVING, SERVING]
    assert secure_stack.update_calls(image_set) == []

    faults.restart_opa()

    await health_becomes(faults.killable, SERVING, READINESS)

    assert await dev_allows(faults.killable)
    async with grpc.aio.insecure_channel(faults.killable.endpoint) as channel:
        stub = service_stub(channel)
        request = update(image_set, study({"StudyDescription": "OPA IS BACK"}))
        call = stub.UpdateImageSetMetadata(request, metadata=DEV_ADMIN, timeout=RPC_TIMEOUT)
        assert_updated(await events_of(call))


# --- OPA slow ------------------------------------------------------------------------------------


async def test_opa_slower_than_its_timeout_is_unavailable(
    secure_stack: SecureStack, faults: Faults
) -> None:
    image_set = secure_stack.take_image_set()
    faults.put_policy(ALLOW_ALL)
    faults.relay.delay = 0.0
    assert await dev_allows(faults.relayed)

    faults.relay.delay = OPA_TIMEOUT * 4
    try:
        refused = await dev_refusal(faults.relayed)
        assert_policy_unavailable(refused)
        assert "timed out" in refused.message
        assert_policy_unavailable(await dev_refusal(faults.relayed, image_set))
        # Slow decisions are not an outage: OPA still answers its health endpoint.
        for _ in range(HEALTH_READINGS):
            names = ("", LIVENESS, READINESS, SERVICE_NAME)
            assert await health_of(faults.relayed, *names) == [SERVING] * len(names)
            await asyncio.sleep(HEALTH_INTERVAL)
    finally:
        faults.relay.delay = 0.0

    assert secure_stack.update_calls(image_set) == []


# --- OPA answering garbage -----------------------------------------------------------------------

GARBAGE = {
    "undefined": "package imaging.update\n\nsomething_else := true\n",
    "string": DECISION + '"allow"\n',
    "boolean": DECISION + "true\n",
    "list": DECISION + '[{"allow": true, "reasons": []}]\n',
    "allow_missing": DECISION + '{"reasons": []}\n',
    "allow_is_a_string": DECISION + '{"allow": "true", "reasons": []}\n',
    "allow_is_a_number": DECISION + '{"allow": 1, "reasons": []}\n',
    "reasons_not_strings": DECISION + '{"allow": true, "reasons": [1]}\n',
    "reasons_is_a_string": DECISION + '{"allow": true, "reasons": "ok"}\n',
    "evaluation_error": (
        "package imaging.update\n\n"
        'decision := {"allow": true, "reasons": []} if input.caller\n'
        'decision := {"allow": false, "reasons": []} if input.request\n'
    ),  # conflicting values: OPA answers HTTP 500
}


@pytest.mark.parametrize("module", GARBAGE.values(), ids=GARBAGE.keys())
async def test_malformed_or_undefined_decision_is_unavailable(
    secure_stack: SecureStack, faults: Faults, module: str
) -> None:
    image_set = secure_stack.take_image_set()
    faults.put_policy(ALLOW_ALL)
    assert await dev_allows(faults.relayed)

    faults.put_policy(module)

    assert_policy_unavailable(await dev_refusal(faults.relayed))
    assert_policy_unavailable(await dev_refusal(faults.relayed, image_set))
    assert secure_stack.update_calls(image_set) == []
