"""Build hook: the wheel gets gRPC stubs generated from protos/ and the OPA policies as data.

grpcio-tools is a build requirement only (pyproject.toml's [build-system]); the stubs are
written straight into the build folder, so a checkout's own `make protos` output never ships.
An editable install skips this: `make protos` generates the stubs (with type stubs) in place.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
POLICIES = ROOT / "policies"
PROTO_PACKAGE = "service/_proto"
"""Where the stubs live in the wheel: protos/x.proto becomes service/_proto/x_pb2.py."""
POLICY_PACKAGE = "service/devstack/policies"
"""Where `imaging-proxy demo` finds the policies when no checkout is around."""


def generate_stubs(build_lib: Path) -> None:
    """protoc (from grpcio-tools) writes the message and service stubs under `build_lib`."""
    from grpc_tools import protoc  # a build requirement, absent at run time

    include = files("grpc_tools") / "_proto"  # google/protobuf/*.proto (Timestamp)
    sources = sorted(
        f"{PROTO_PACKAGE}/{p.relative_to(PROTOS).as_posix()}" for p in PROTOS.rglob("*.proto")
    )
    argv = ["protoc", f"-I{PROTO_PACKAGE}={PROTOS}", f"-I{include}"]
    argv += [f"--python_out={build_lib}", f"--grpc_python_out={build_lib}", *sources]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


def copy_policies(build_lib: Path) -> None:
    target = build_lib / POLICY_PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(POLICIES, target)


class BuildPyWithGenerated(build_py):
    """`build_py`, then the generated stubs and the policies into the same build folder."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or self.dry_run:
            return
        build_lib = Path(self.build_lib)
        generate_stubs(build_lib)
        copy_policies(build_lib)


setup(cmdclass={"build_py": BuildPyWithGenerated})
