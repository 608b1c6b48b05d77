"""End-to-end helpers: the shared `stack` fixtures live in tests/support/stack.py (a plugin
registered by tests/conftest.py, so every suite shares one demo); the helpers are re-exported."""

from __future__ import annotations

from tests.support.stack import (
    EMULATOR_ENV,
    SEEDED_IMAGE_SETS,
    Stack,
    collect,
    dev,
    image_set_metadata,
    patient_name_update,
)

__all__ = [
    "EMULATOR_ENV",
    "SEEDED_IMAGE_SETS",
    "Stack",
    "collect",
    "dev",
    "image_set_metadata",
    "patient_name_update",
]
