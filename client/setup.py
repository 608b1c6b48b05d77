"""Build hook: the wheel gets the gRPC stubs generated from the repository's protos/.

grpcio-tools is a build requirement only; the stubs are written straight into the build folder,
so a checkout's own `make protos` output never ships. An editable install skips this: `make
protos` calls the same `generate_stubs` on the checkout. The sdist carries a copy of protos/.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTOS = next(p for p in (HERE / "protos", HERE.parent / "protos") if p.is_dir())
"""protos/ of an sdist, else the checkout's (one level up)."""
STUBS = "imaging_proxy_client/stubs"
"""Where the stubs live: protos/imaging/x.proto becomes
imaging_proxy_client/stubs/imaging/x_pb2.py."""


def generate_stubs(build_lib: Path) -> None:
    """protoc (from grpcio-tools) writes the message and service stubs under `build_lib`."""
    from grpc_tools import protoc  # a build requirement, absent at run time

    include = files("grpc_tools") / "_proto"  # google/protobuf/*.proto (Timestamp)
    sources = sorted(f"{STUBS}/{p.relative_to(PROTOS).as_posix()}" for p in PROTOS.rglob("*.proto"))
    argv = ["protoc", f"-I{STUBS}={PROTOS}", f"-I{include}"]
    argv += [f"--python_out={build_lib}", f"--grpc_python_out={build_lib}"]
    # Type stubs too (mypy-protobuf's plugins, build requirements): a service's mypy sees types.
    argv += [f"--mypy_out={build_lib}", f"--mypy_grpc_out={build_lib}", *sources]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if not (self.editable_mode or self.dry_run):
            generate_stubs(Path(self.build_lib))


class SdistWithProtos(sdist):
    """The sdist is built in client/, but the contract lives in the repository's protos/."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(PROTOS, Path(base_dir) / "protos", dirs_exist_ok=True)


if __name__ == "__main__":  # as setuptools runs it; `make protos` imports generate_stubs
    setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})
