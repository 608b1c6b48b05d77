"""Issue 10, the policy boundary as a property: for any document and any principal, every change
the backend receives was allowed by a decision that saw it.

Against the shared demo (the real proxy, OPA with policies/, the emulator). Each example is a batch:
one case per image set of a pool seeded for this test, run at once (one update in flight per image
set). Oracle: the emulator's request log says which updates reached it, the image set's versions
before and after say what each one changed; both are judged against the dry run (EvaluateUpdate) of
the same request by the same principal: its decision and the change list that decision saw.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import grpc
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

import medical_imaging_model
from tests.e2e.fuzz.documents import Case, Layout, Plan, plans
from tests.e2e.fuzz.oracle import touched, uncovered
from tests.e2e.secure_stack import write_seed_studies
from tests.support.stack import Stack, dev

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = 6
"""Image sets updated at once, one case each per batch."""
CI_BATCHES = 20
FLOOR = 0.25
"""At least this share of cases must be allowed and finish UPDATED: the property is exercised."""
TIMEOUT = 30.0
NO_GRANTS = frozenset({"demo-viewer", "nobody"})
"""Principals policies/data.json grants nothing: nothing of theirs may reach the backend."""


@dataclass
class Outcome:
    """What the proxy answered: the dry run, then the update stream."""

    evaluation: pb.Evaluation | None
    evaluate_code: str
    """The dry run's status code when it failed."""
    decision_id: str = ""
    """From the stream's `authorized` event: an allowed decision."""
    finished: str = ""
    """The workflow status of the stream's `finished` event."""
    update_code: str = ""
    """The stream's status code when it failed."""
    message: str = ""
    """The stream's error message, or the finished event's (never a value: the proxy's rule)."""

    @property
    def label(self) -> str:
        if self.finished:
            return f"finished {self.finished}"
        if self.decision_id:
            return f"authorized, then {self.update_code or 'no finished event'}"
        return f"refused {self.update_code}"


class Backend:
    """HealthImaging (the emulator) read through its own API, as a separate oracle."""

    def __init__(self, stack: Stack) -> None:
        session = botocore.session.get_session()
        medical_imaging_model.install(session)
        self.datastore_id = stack.datastore_id
        self._emulator_url = stack.emulator_url
        self._client: Any = session.create_client(  # botocore's methods come from the model
            "medical-imaging",
            region_name="us-east-1",
            endpoint_url=stack.emulator_url,
            aws_access_key_id="emulator",
            aws_secret_access_key="emulator",
            config=Config(inject_host_prefix=False),
        )

    def seed(self, directory: Path, count: int) -> list[str]:
        """`count` fresh image sets (two series: two instances and one), for this test alone."""
        paths = [str(path) for path in write_seed_studies(directory, count)]
        body = {"paths": paths, "datastoreId": self.datastore_id, "isPrimary": False}
        request = urllib.request.Request(
            f"{self._emulator_url}/_emulator/seed", json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return list(json.load(response)["imageSetIds"])

    def layout(self, image_set_id: str) -> Layout:
        """The latest version and its metadata, once no update is in progress."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = self._client.get_image_set(
                datastoreId=self.datastore_id, imageSetId=image_set_id
            )
            if found["imageSetState"] != "LOCKED" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        version = found["versionId"]
        return Layout(image_set_id, version, self.metadata(image_set_id, version))

    def metadata(self, image_set_id: str, version: str) -> Any:
        response = self._client.get_image_set_metadata(
            datastoreId=self.datastore_id, imageSetId=image_set_id, versionId=version
        )
        raw = response["imageSetMetadataBlob"].read()
        return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def run(stub: pb_grpc.MetadataUpdateServiceStub, datastore_id: str, case: Case) -> Outcome:
    """The dry run, then the update itself, by the case's principal."""
    request, metadata = case.request(datastore_id), dev(case.principal)
    for attempt in range(5):  # the per-principal limit refuses a batch's excess: wait our turn
        try:
            outcome = Outcome(stub.EvaluateUpdate(request, metadata=metadata, timeout=TIMEOUT), "")
        except grpc.RpcError as error:
            outcome = Outcome(None, error.code().name)
        if outcome.evaluate_code != "RESOURCE_EXHAUSTED":
            break
        time.sleep(0.2 * (attempt + 1))
    try:
        for event in stub.UpdateImageSetMetadata(request, metadata=metadata, timeout=TIMEOUT):
            kind = event.WhichOneof("event")
            if kind == "authorized":
                outcome.decision_id = event.authorized.decision_id
            elif kind == "finished":
                outcome.finished = event.finished.state.image_set_workflow_status
                outcome.message = event.finished.state.message
    except grpc.RpcError as error:
        outcome.update_code, outcome.message = error.code().name, error.details() or ""
    return outcome


def violations(case: Case, outcome: Outcome, calls: list[Any], after: Layout) -> list[str]:
    """Where the boundary did not hold for this case (empty when it did)."""
    found = []
    evaluation = outcome.evaluation
    allowed = evaluation is not None and evaluation.decision.allow
    if calls and not outcome.decision_id:
        found.append("an update reached the backend without an allowed decision")
    if calls and case.principal in NO_GRANTS:
        found.append("an update of a principal without grants reached the backend")
    if outcome.decision_id and not allowed and outcome.evaluate_code != "RESOURCE_EXHAUSTED":
        found.append("the stream was authorized but the dry run of the same request was not")
    if after.version != case.layout.version and not calls:
        found.append("the image set changed without a logged update")
    if after.version != case.layout.version:
        changes = list(evaluation.changes) if evaluation is not None else []
        missed = uncovered(touched(case.layout.document, after.document), changes)
        if missed:
            found.append(f"changed outside the decision's change list: {missed}")
    return [_report(case, outcome, calls, problem) for problem in found]


def _report(case: Case, outcome: Outcome, calls: list[Any], problem: str) -> str:
    updatable, removable = case.documents()
    evaluation = outcome.evaluation
    changes = evaluation.changes if evaluation is not None else []
    seen = [(c.action, c.level, c.series_uid, c.instance_uid, c.tag) for c in changes]
    dry_run = outcome.evaluate_code or (
        evaluation and f"allow={evaluation.decision.allow} {list(evaluation.decision.reasons)}"
    )
    return (
        f"{problem}\n  principal={case.principal} force={case.force} version={case.version} "
        f"image set={case.layout.image_set_id}\n  updatable={json.dumps(updatable)}\n"
        f"  removable={json.dumps(removable)}\n  outcome={outcome.label} ({outcome.message}) "
        f"dry run={dry_run}\n"
        f"  the decision saw: {seen}\n  calls: {calls}"
    )


@pytest.fixture(scope="module")
def backend(stack: Stack) -> Backend:
    return Backend(stack)


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Iterator[pb_grpc.MetadataUpdateServiceStub]:
    """Blocking: hypothesis drives plain functions; a thread per image set runs a batch."""
    with grpc.insecure_channel(stack.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


def run_batch(
    stack: Stack, backend: Backend, stub: pb_grpc.MetadataUpdateServiceStub, drawn: list[Case]
) -> list[tuple[Case, Outcome, list[str]]]:
    """The cases at once (one per image set); each with its outcome and violations."""
    mark = len(stack.requests())
    with ThreadPoolExecutor(len(drawn)) as threads:
        outcomes = list(threads.map(lambda case: run(stub, stack.datastore_id, case), drawn))
    logged = [r for r in stack.requests()[mark:] if r["operation"] == "UpdateImageSetMetadata"]
    judged = []
    for case, outcome in zip(drawn, outcomes, strict=True):
        calls = [r for r in logged if r["imageSetId"] == case.layout.image_set_id]
        after = backend.layout(case.layout.image_set_id)
        judged.append((case, outcome, violations(case, outcome, calls, after)))
    return judged


def test_every_change_the_backend_receives_was_allowed_by_a_decision_that_saw_it(
    stack: Stack,
    backend: Backend,
    stub: pb_grpc.MetadataUpdateServiceStub,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pool = backend.seed(tmp_path_factory.mktemp("boundary"), POOL)
    tally: Counter[str] = Counter()
    problems: list[str] = []  # judged after the run: hypothesis would re-run a failing batch
    started = time.monotonic()

    @settings(
        max_examples=max(CI_BATCHES, settings().max_examples // 20),
        phases=[Phase.generate],  # the image sets move on: a replay would not reproduce a case
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(plans(), min_size=POOL, max_size=POOL))
    def batch(batch_plans: list[Plan]) -> None:
        drawn = [plan.on(backend.layout(i)) for plan, i in zip(batch_plans, pool, strict=True)]
        for case, outcome, found in run_batch(stack, backend, stub, drawn):
            problems.extend(found)
            tally[outcome.label] += 1
            tally[f"{case.principal}: {outcome.label}"] += 1

    batch()
    total = sum(n for label, n in tally.items() if ":" not in label)
    print(f"\nboundary property: {total} cases in {time.monotonic() - started:.0f} s")
    for label, count in sorted(tally.items()):
        print(f"  {count:5d}  {label}")
    assert not problems, "\n".join(problems)
    updated = tally["finished UPDATED"]
    assert updated >= FLOOR * total, f"only {updated} of {total} cases were allowed and finished"
