"""Build hook: the wheel carries the OPA policies as data, for `imaging-proxy demo` without a checkout.

The gRPC stubs are not built here: they come with the client distribution (client/setup.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

POLICIES = Path(__file__).resolve().parent / "policies"
POLICY_PACKAGE = "devstack/policies"
"""Where `imaging-proxy demo` finds the policies when no checkout is around."""


class BuildPyWithPolicies(build_py):
    """`build_py`, then the policies into the same build folder."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or self.dry_run:
            return
        target = Path(self.build_lib) / POLICY_PACKAGE
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(POLICIES, target)


setup(cmdclass={"build_py": BuildPyWithPolicies})
