"""Property-based tests of the version/lock state machine: hypothesis drives the backend."""

from __future__ import annotations

import functools
import gzip
import json
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from emulator.config import Progressions, Quotas, Settings
from emulator.dicom_import import build_document, read_instances
from emulator.exceptions import ConflictException
from emulator.models import Backend
from emulator.seeding import ensure_datastore
from emulator.state import Progression, Trigger
from emulator.updates import MetadataUpdate
from tests.emulator.conftest import DEMO_DATASTORE, sample

NAMES = st.text(alphabet="ABCDEFGH^", min_size=1, max_size=8)


def _fresh_backend(progression: Progression) -> tuple[Backend, str, list[float]]:
    now = [1_700_000_000.0]
    settings = Settings(quotas=Quotas(enforce=False), progressions=Progressions(update=progression))
    backend = Backend(settings, clock=lambda: now[0])
    ensure_datastore(backend, DEMO_DATASTORE)
    image_set = backend.add_image_set(DEMO_DATASTORE, _ct_document(), is_primary=False)
    return backend, image_set.image_set_id, now


@functools.cache
def _ct_document() -> dict[str, Any]:
    return build_document(read_instances([sample("CT_small.dcm")]))


def _name_update(name: str, version: str) -> MetadataUpdate:
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
    return MetadataUpdate(latest_version_id=version, updatable=json.dumps(document).encode())


class VersionMachine(RuleBasedStateMachine):
    """The model: the name each settled version holds, and whether an update is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.backend, self.image_set_id, self.now = _fresh_backend(
            Progression(Trigger.SECONDS, 1.0)
        )
        self.names: dict[int, str] = {1: "CompressedSamples^CT1"}
        self.pending: tuple[int, str, float] | None = None
        self.seen_ids: list[int] = [1]

    def _latest(self) -> int:
        return self.backend.get_image_set(DEMO_DATASTORE, self.image_set_id, None)[1].version_id

    def _name(self, version: int) -> str:
        blob = self.backend.get_image_set_metadata(DEMO_DATASTORE, self.image_set_id, str(version))
        return str(json.loads(gzip.decompress(blob))["Patient"]["DICOM"]["PatientName"])

    def _submit(self, request: MetadataUpdate, new_name: str) -> None:
        _, version = self.backend.update_image_set_metadata(
            DEMO_DATASTORE, self.image_set_id, request
        )
        assert version.version_id not in self.seen_ids, "a version id was reused"
        self.seen_ids.append(version.version_id)
        self.pending = (version.version_id, new_name, self.now[0])

    @precondition(lambda self: self.pending is None)
    @rule(name=NAMES)
    def update(self, name: str) -> None:
        self._submit(_name_update(name, str(self._latest())), name)

    @precondition(lambda self: self.pending is None)
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(self.names)))
        request = MetadataUpdate(
            latest_version_id=str(self._latest()), revert_to_version_id=str(target)
        )
        self._submit(request, self.names[target])

    @rule(name=NAMES, stale_by=st.integers(min_value=1, max_value=3))
    def stale_update_is_refused(self, name: str, stale_by: int) -> None:
        stale = max(self._latest() - stale_by, 0)
        with pytest.raises(ConflictException):
            self.backend.update_image_set_metadata(
                DEMO_DATASTORE, self.image_set_id, _name_update(name, str(stale))
            )

    @precondition(lambda self: self.pending is not None)
    @rule(name=NAMES)
    def update_while_locked_is_refused(self, name: str) -> None:
        with pytest.raises(ConflictException):
            self.backend.update_image_set_metadata(
                DEMO_DATASTORE, self.image_set_id, _name_update(name, str(self._latest()))
            )

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def time_passes(self, seconds: float) -> None:
        """The update lands once 1 s has passed since it was submitted (the configured delay)."""
        self.now[0] += seconds
        if self.pending is not None and self.now[0] - self.pending[2] >= 1.0:
            version, name, _ = self.pending
            self.names[version] = name
            self.pending = None

    @invariant()
    def versions_are_consecutive_and_unique(self) -> None:
        versions = self.backend.datastore(DEMO_DATASTORE).image_set(self.image_set_id).versions
        assert [v.version_id for v in versions] == list(range(1, len(versions) + 1))
        assert sorted(self.seen_ids) == [v.version_id for v in versions]

    @invariant()
    def no_settled_version_is_lost_or_changed(self) -> None:
        for version, name in self.names.items():
            assert self._name(version) == name

    @invariant()
    def locked_exactly_while_an_update_is_pending(self) -> None:
        _, latest = self.backend.get_image_set(DEMO_DATASTORE, self.image_set_id, None)
        assert (latest.state == "LOCKED") == (self.pending is not None)


VersionMachine.TestCase.settings = settings(stateful_step_count=25, deadline=None)
TestVersionMachine = VersionMachine.TestCase
