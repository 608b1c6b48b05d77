"""Local stack: the builder (OPA, a seeded emulator, Redis if asked, proxies), stopped in order.

The demo, the end-to-end tests and the benchmarks all start their processes here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.admin import EmulatorAdmin
from devstack.examples import DEMO_DATASTORE_ID, seed_examples
from devstack.processes import Child, free_port, stop_all
from devstack.proxies import ProxyProcess, launch_proxy
from devstack.seeds import fresh_copies
from devstack.servers import PROXY_COMMAND, start_emulator, start_opa, start_redis
from devstack.settings import Sections, merged, shared_by_replicas, write_toml

"""The AWS CLI examples' data store; policies/data.json grants the `demo-*` principals on it."""
DEV_IDENTITY = ("--insecure-dev-identity",)
"""Callers name themselves with x-dev-principal (never outside a laptop or a test)."""

SeedMaker = Callable[[int, Path], list[Path]]
"""Writes DICOM files for `count` image sets into a folder; returns their paths."""


@dataclass(frozen=True)
class StackSpec:
    """What to start besides the proxies."""

    image_sets: int
    """Image sets the emulator is seeded with (latest version "1" each)."""
    seeds: SeedMaker = fresh_copies
    update_delay: float = 0.3
    """Seconds the emulator takes to apply an update."""
    quotas: bool = False
    """Enforce HealthImaging's quotas in the emulator (else it runs with --no-quotas)."""
    emulator_settings: Sections = field(default_factory=dict)
    """Emulator settings file sections (e.g. `settings.update_quota`); implies `quotas`."""
    emulator_args: tuple[str, ...] = ()
    datastore_id: str = DEMO_DATASTORE_ID
    policies: Path | None = None
    """OPA's policy folder (default: policies/)."""
    opa: str | None = None
    """OPA's binary (default: `servers.find_opa()`)."""
    redis: bool = False
    """Start a redis-server for replicas to share (`LocalStack.redis_url`)."""
    aws_examples: bool = True
    """Also seed the AWS CLI page's image sets (`examples.py`), outside `image_set_ids`."""


@dataclass
class LocalStack:
    """A running OPA + emulator (+ Redis), the proxies started on it, and unused image sets."""

    work: Path
    """Where the children log (proxies in folders of their own unless told otherwise)."""
    opa_url: str
    emulator: EmulatorAdmin
    datastore_id: str
    image_set_ids: tuple[str, ...]
    redis_url: str = ""
    example_image_set_ids: tuple[str, ...] = ()
    """The AWS CLI page's image sets (never handed out by `take`)."""
    children: list[Child] = field(default_factory=list)
    """Every child in start order; stopped in reverse (proxies first, OPA last)."""
    unused: list[str] = field(default_factory=list)
    """Seeded image sets nobody has taken yet."""

    def take(self, count: int = 1) -> list[str]:
        """`count` image sets nobody has used (latest version "1")."""
        if len(self.unused) < count:
            raise RuntimeError("the stack ran out of fresh image sets; seed more")
        taken, self.unused[:] = self.unused[:count], self.unused[count:]
        return taken

    @property
    def emulator_url(self) -> str:
        return self.emulator.url

    def backend_args(self) -> list[str]:
        """`serve` options pointing a proxy at this OPA and emulator."""
        return ["--opa-url", self.opa_url, "--endpoint-url", self.emulator.url]

    def add_proxy(
        self,
        log_dir: Path,
        args: Sequence[str] = (),
        settings: Sections | None = None,
        *,
        port: int = 0,
        identity: Sequence[str] = DEV_IDENTITY,
        env: Mapping[str, str] | None = None,
        name: str = "proxy",
        command: Sequence[str] = PROXY_COMMAND,
        metrics_port: int = 0,
    ) -> ProxyProcess:
        """A proxy on this backend (`args` come last, so they win); stopped with the stack."""
        argv = ["--port", str(port), *identity, *self.backend_args(), *args]
        proxy = launch_proxy(
            log_dir, argv, settings, env, name=name, command=command, metrics_port=metrics_port
        )
        self.children.append(proxy.child)
        return proxy

    def replica_settings(self, *layers: Sections) -> Sections:
        """`layers` merged, then a journal and a budget shared in this stack's Redis."""
        return merged(*layers, shared_by_replicas(self.redis_url) if self.redis_url else {})

    def stop(self) -> None:
        stop_all(self.children)


def start_stack(spec: StackSpec, work: Path, children: list[Child]) -> LocalStack:
    """Start OPA, Redis (if asked) and the seeded emulator, appending each to `children` as it
    starts, so a caller that fails half way still stops what did start."""
    opa_port = free_port()
    policies = [spec.policies] if spec.policies else []
    children.append(start_opa(work, opa_port, policies, opa=spec.opa))
    redis_url = ""
    if spec.redis:
        redis, redis_url = start_redis(work)
        children.append(redis)
    emulator = start_emulator(work, emulator_args(spec, work))
    children.append(emulator.child)
    admin = EmulatorAdmin(emulator.url)
    examples = (
        seed_examples(admin, spec.datastore_id, work / "aws-examples") if spec.aws_examples else []
    )
    return LocalStack(
        work=work,
        opa_url=f"http://127.0.0.1:{opa_port}",
        emulator=admin,
        datastore_id=emulator.datastore_id,
        image_set_ids=emulator.image_set_ids,
        redis_url=redis_url,
        example_image_set_ids=tuple(examples),
        children=children,
        unused=list(emulator.image_set_ids),
    )


@contextlib.contextmanager
def running_stack(spec: StackSpec, work: Path) -> Iterator[LocalStack]:
    """`start_stack`, yielded; every child (proxies included) is stopped on exit."""
    children: list[Child] = []
    try:
        yield start_stack(spec, work, children)
    finally:
        stop_all(children)


def emulator_args(spec: StackSpec, work: Path) -> list[str]:
    """`python -m emulator` options for `spec`, seeding from files written under `work/seed`."""
    args = ["--datastore-id", spec.datastore_id, "--non-primary"]
    args += ["--update-delay", str(spec.update_delay)]
    if spec.emulator_settings:
        args += ["--config", str(write_toml(work / "emulator.toml", spec.emulator_settings))]
    elif not spec.quotas:
        args.append("--no-quotas")
    args += _seed_args(spec.seeds(spec.image_sets, work / "seed"), work / "seed")
    return [*args, *spec.emulator_args]


def _seed_args(paths: Sequence[Path], folder: Path) -> list[str]:
    """One --seed for the folder when every file is in it, else one per file."""
    if paths and all(path.parent == folder for path in paths):
        return [f"--seed={folder}"]
    return [f"--seed={path}" for path in paths]
