"""Shared fixtures: an emulator on a free port (in a thread, so sync boto3 works) and clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aioboto3
import boto3  # type: ignore[import-untyped]
import pydicom
import pytest
from aiobotocore.config import AioConfig
from botocore.config import Config
from pydicom.uid import UID

import medical_imaging_model
from devstack.admin import EmulatorAdmin
from devstack.examples import (
    DEMO_DATASTORE_ID,
    EXAMPLE_SERIES,
    EXAMPLE_SERIES_7,
    EXAMPLE_SOP_7,
)
from devstack.polling import eventually_sync
from devstack.seeds import sample_path
from emulator.config import Quotas, Settings, with_update_delay
from emulator.models import Backend
from emulator.server import running

DEMO_DATASTORE = DEMO_DATASTORE_ID
EXAMPLE_STUDY = "1.2.826.0.1.3680043.8.498.1"
CREDENTIALS = {"aws_access_key_id": "emulator", "aws_secret_access_key": "emulator"}
T = TypeVar("T")


sample = sample_path
"""One of pydicom's test files."""


@dataclass(frozen=True)
class Emulator(EmulatorAdmin):
    """An emulator serving on 127.0.0.1 from a background thread."""

    backend: Backend | None = None
    """Its state, for tests that look behind the wire."""

    def reset_and_seed(
        self,
        paths: list[Path],
        *,
        datastore_id: str = DEMO_DATASTORE,
        image_set_id: str | None = None,
        primary: bool = False,
    ) -> list[str]:
        self.admin("POST", "reset")
        body = {"paths": [str(p) for p in paths], "datastoreId": datastore_id, "isPrimary": primary}
        if image_set_id is not None:
            body["imageSetId"] = image_set_id
        return list(self.admin("POST", "seed", body)["imageSetIds"])

    def set_faults(self, knobs: Mapping[str, object] | None = None, **faults: object) -> None:
        """Replace every fault knob, given as a mapping or as keywords."""
        super().set_faults({**(knobs or {}), **faults})


@contextmanager
def emulator_thread(settings: Settings) -> Iterator[Emulator]:
    """Runs `emulator.server.running` on its own event loop until the block ends."""
    started: dict[str, Any] = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop = asyncio.Event()
        started["stop"] = stop
        async with running(settings) as emu:
            started["emulator"] = Emulator(emu.url, backend=emu.backend)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "emulator did not start"
    try:
        yield started["emulator"]
    finally:
        loop.call_soon_threadsafe(started["stop"].set)
        thread.join(10)


def fast_settings(**changes: Any) -> Settings:
    """Fast defaults for tests: quotas off, asynchronous work done after 50 ms."""
    base = Settings(port=0, quotas=Quotas(enforce=False), random_seed=7)
    return dataclasses.replace(with_update_delay(base, 0.05), **changes)


IMPORT_URI = "s3://import-bucket/input/"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The shared emulator; StartDICOMImportJob reads IMPORT_URI from a folder holding MR_small."""
    folder = tmp_path_factory.mktemp("import-input")
    shutil.copy(sample("MR_small.dcm"), folder / "mr.dcm")
    settings = fast_settings(import_folders={IMPORT_URI: folder})
    with emulator_thread(settings) as running_emulator:
        yield running_emulator


@pytest.fixture
def seeded(emulator: Emulator) -> list[str]:
    """A clean account: CT_small and MR_small as non-primary image sets in the demo data store."""
    emulator.set_faults()
    return emulator.reset_and_seed([sample("CT_small.dcm"), sample("MR_small.dcm")])


def boto3_client(url: str) -> Any:
    config = Config(inject_host_prefix=False, retries={"max_attempts": 1, "mode": "standard"})
    session = boto3.Session(region_name="us-east-1", **CREDENTIALS)
    medical_imaging_model.install(session._session)
    return session.client("medical-imaging", endpoint_url=url, config=config)


@pytest.fixture(scope="session")
def client(emulator: Emulator) -> Any:
    """Plain boto3, with the newest model (it knows includeStudyImageSets)."""
    return boto3_client(emulator.url)


@pytest.fixture
async def aio_client(emulator: Emulator) -> AsyncIterator[Any]:
    session = aioboto3.Session(region_name="us-east-1", **CREDENTIALS)
    medical_imaging_model.install(session._session)
    config = AioConfig(inject_host_prefix=False, retries={"max_attempts": 1, "mode": "standard"})
    async with session.client("medical-imaging", endpoint_url=emulator.url, config=config) as c:
        yield c


def eventually(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Polls `check` until it returns a truthy value (AssertionError meanwhile)."""
    result = eventually_sync(check, timeout, until=bool)
    assert result is not None
    return result


def settled(client: Any, datastore_id: str, image_set_id: str) -> dict[str, Any]:
    """GetImageSet once the image set is no longer LOCKED."""

    def check() -> dict[str, Any] | None:
        got: dict[str, Any] = client.get_image_set(
            datastoreId=datastore_id, imageSetId=image_set_id
        )
        return None if got["imageSetState"] == "LOCKED" else got

    return eventually(check)


def metadata(client: Any, datastore_id: str, image_set_id: str, version: str | None = None) -> Any:
    import gzip

    extra = {} if version is None else {"versionId": version}
    got = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **extra)
    assert got["contentEncoding"] == "gzip"
    return json.loads(gzip.decompress(got["imageSetMetadataBlob"].read()))


def blob(document: dict[str, Any]) -> str:
    return json.dumps(document)


@pytest.fixture(scope="session")
def example_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One study shaped for the AWS CLI examples: their series/instance UIDs, description CHEST."""
    folder = tmp_path_factory.mktemp("example-dicom")
    uids = [
        (EXAMPLE_SERIES, EXAMPLE_SERIES),
        (EXAMPLE_SERIES, EXAMPLE_SERIES[:-1] + "2"),
        (EXAMPLE_SERIES_7, EXAMPLE_SOP_7),
    ]
    for index, (series_uid, sop_uid) in enumerate(uids):
        ds = pydicom.dcmread(sample("CT_small.dcm"))
        ds.StudyInstanceUID = UID(EXAMPLE_STUDY)
        ds.StudyDescription = "CHEST"
        ds.SeriesInstanceUID = UID(series_uid)
        ds.SOPInstanceUID = UID(sop_uid)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.save_as(folder / f"instance{index}.dcm")
    return folder
