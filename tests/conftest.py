"""Shared test configuration: hypothesis profiles (HYPOTHESIS_PROFILE=fuzz for the long run) and
the end-to-end `stack` fixtures, shared by every suite so one demo serves them all."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.support.stack"]

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "fuzz", max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
