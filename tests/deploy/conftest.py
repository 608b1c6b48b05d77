"""Shared by the deploy tests: the Dockerfile's image, built once per session without an engine."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.image import Image, build


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    """Built outside pytest's private (0700) temp folder: the image's user must reach it."""
    work = Path(tempfile.mkdtemp(prefix="imaging-proxy-image-"))
    os.chmod(work, 0o755)
    try:
        yield build(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp folder other users can traverse (containers run as their own uid when root)."""
    work = Path(tempfile.mkdtemp(prefix="imaging-proxy-pod-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
