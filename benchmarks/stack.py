"""The system under test as processes: real OPA, the seeded emulator, proxy replicas, Redis.

Started by `devstack` (the builder `imaging-proxy demo` uses), plus what a benchmark needs
and the demo does not: grants for ten benchmark principals (a copy of `policies/` with them added
to `data.json`), emulator quota overrides, several proxy replicas, Redis, and a proxy run under
pyinstrument. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from devstack.admin import EmulatorAdmin
from devstack.examples import DEMO_DATASTORE_ID
from devstack.processes import Child, stop_all
from devstack.proxies import ProxyProcess
from devstack.servers import EMULATOR_AWS_ENV, find_policies
from devstack.settings import NO_BUDGET, Sections, merged
from devstack.stack import LocalStack, StackSpec, start_stack
from service.core.config import Settings

DATASTORE_ID = DEMO_DATASTORE_ID
PRINCIPALS = tuple(f"bench-{index:02d}" for index in range(10))
"""Benchmark callers, each granted metadata-editor on the benchmark data store."""
AWS_ENV = EMULATOR_AWS_ENV
Quotas = Literal["off", "default"] | Sections
"""The emulator's quotas: none, HealthImaging's defaults, or settings sections."""


@dataclass(frozen=True)
class StackOptions:
    """What to start."""

    image_sets: int
    """Image sets seeded (fresh copies of pydicom's samples)."""
    update_delay: float = 0.001
    """Seconds the emulator takes to apply an update. Not 0: the emulator's lazy clock finishes
    an immediate update at the next call and stamps it then, so the proxy would learn the delay
    of its own first poll as the typical update duration."""
    quotas: Quotas = "off"
    """'off' (no emulator quotas), 'default' (HealthImaging's), or emulator settings sections
    (e.g. `settings.update_quota`)."""
    proxy_args: tuple[str, ...] = ()
    """Extra `imaging-proxy serve` options."""
    proxy_config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Proxy settings by section (written as TOML, passed as --config); see `known_sections`."""
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of the proxy processes (e.g. MALLOC_ARENA_MAX)."""
    replicas: int = 1
    redis: bool = False
    """Start a redis-server; its URL is in `Stack.redis_url`."""
    profile: Path | None = None
    """Run the (first) proxy under pyinstrument, writing its session here on exit."""
    trace_memory: Path | None = None
    """Run the (first) proxy with tracemalloc; SIGUSR1 writes its heap report here."""


@dataclass
class Stack:
    """A running system: where everything is, and the process ids to measure."""

    endpoints: list[str]
    datastore_id: str
    image_set_ids: list[str]
    emulator_url: str
    opa_url: str
    redis_url: str
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    keep_logs: bool = False
    """Set when a result looks wrong: the processes' logs are then kept for a look."""

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def pid(self, name: str) -> int:
        return next(c.pid for c in self.children if c.name == name)

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children if c.name != "redis"}

    def emulator(self, method: str, path: str, body: object | None = None) -> Any:
        """Call the emulator's admin endpoint (`/_emulator/...`)."""
        return EmulatorAdmin(self.emulator_url, timeout=60).admin(method, path, body)

    def requests(self) -> list[dict[str, Any]]:
        """The emulator's request log (every API call it received)."""
        return list(self.emulator("GET", "requests")["requests"])

    def clear_requests(self) -> None:
        self.emulator("DELETE", "requests")

    def set_faults(self, faults: Mapping[str, float]) -> None:
        """Replace the emulator's fault knobs (those left out return to 0)."""
        self.emulator("PUT", "faults", dict(faults))


@contextlib.contextmanager
def running(options: StackOptions, name: str) -> Iterator[Stack]:
    """Start everything, yield it, stop it (proxies first, then the emulator, Redis, OPA).

    The processes' logs are deleted after a clean run, kept (path printed) after a failure or
    when the benchmark set `keep_logs`.
    """
    signal.signal(signal.SIGTERM, _exit)  # a killed benchmark still stops its children
    log_dir = Path(tempfile.mkdtemp(prefix=f"imaging-proxy-bench-{name}-"))
    children: list[Child] = []
    keep = True
    try:
        started = _start(options, log_dir, children)
        yield started
        keep = started.keep_logs
    finally:
        stop_all(children, timeout=60)
        if keep:
            print(f"process logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _start(options: StackOptions, log_dir: Path, children: list[Child]) -> Stack:
    spec = StackSpec(
        image_sets=options.image_sets,
        update_delay=options.update_delay,
        quotas=options.quotas != "off",
        emulator_settings={} if isinstance(options.quotas, str) else options.quotas,
        policies=_policies_with_grants(log_dir),
        redis=options.redis,
    )
    local = start_stack(spec, log_dir, children)
    proxies = [_start_proxy(local, options, index) for index in range(options.replicas)]
    return Stack(
        endpoints=[proxy.endpoint for proxy in proxies],
        datastore_id=local.datastore_id,
        image_set_ids=list(local.image_set_ids),
        emulator_url=local.emulator_url,
        opa_url=local.opa_url,
        redis_url=local.redis_url,
        log_dir=log_dir,
        children=children,
    )


def _policies_with_grants(log_dir: Path) -> Path:
    """A copy of policies/ whose data.json also grants metadata-editor to the bench principals."""
    target = log_dir / "policies"
    shutil.copytree(find_policies(), target)
    data_file = target / "data.json"
    data = json.loads(data_file.read_text())
    grants = data["imaging"]["grants"].setdefault(DATASTORE_ID, {})
    # The benchmarks use development identity: x-dev-principal NAME is the principal dev:NAME.
    grants.update({f"dev:{principal}": ["metadata-editor"] for principal in PRINCIPALS})
    data_file.write_text(json.dumps(data, indent=2))
    return target


def _start_proxy(local: LocalStack, options: StackOptions, index: int) -> ProxyProcess:
    """Replica `index`; the first one under a profiler when asked."""
    command: tuple[str, ...] = ("-m", "imaging_proxy_client.cli.main")
    if index == 0 and options.profile is not None:
        # pyinstrument samples the event loop's thread every 1 ms; the session is saved on exit.
        profiler = ("-m", "pyinstrument", "--renderer=pyisession", "--outfile")
        command = (*profiler, str(options.profile), *command)
    elif index == 0 and options.trace_memory is not None:
        command = ("-m", "benchmarks.traced_proxy", str(options.trace_memory))
    return local.add_proxy(
        local.work / f"proxy-{index}",
        options.proxy_args,
        known_sections(_proxy_settings(options, local)),
        env=options.proxy_env,
        name=f"proxy-{index}",
        command=command,
    )


# A benchmark drives up to a thousand concurrent calls from a handful of principals, which then
# wait their turn in the shared stages; the bound on what one caller has waiting (1,000 by
# default) is lifted so a large run is never refused. The stages' work is still done and measured.
UNGATED: Sections = {"admission": {"max_queued_per_principal": 100_000}}


def _proxy_settings(options: StackOptions, local: LocalStack) -> Sections:
    # No emulator quotas: the proxy's own budgets would only throttle. Replicas share the
    # journal and the quota budget in Redis. The benchmark's own settings win over both.
    unthrottled = NO_BUDGET if options.quotas == "off" else {}
    return merged(unthrottled, UNGATED, local.replica_settings(), options.proxy_config)


def known_sections(sections: Sections) -> Sections:
    """`sections` without those this checkout's proxy does not have (yet)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    for name in sections.keys() - known:
        print(f"note: the proxy has no [{name}] settings; left out", file=sys.stderr)
    return {name: values for name, values in sections.items() if name in known}
