"""The system under test as processes: real OPA, the seeded emulator, proxy replicas, Redis.

Built from the same helpers `imaging-proxy demo` uses (`service.cli.processes`), plus what a
benchmark needs and the demo does not: grants for ten benchmark principals (a copy of
`policies/` with them added to `data.json`), an emulator TOML (quota overrides), several proxy
replicas, Redis, and a proxy run under pyinstrument. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import socket
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service.cli import processes
from service.cli.demo import DEMO_DATASTORE_ID, DEMO_SAMPLES, EMULATOR_AWS_ENV
from service.config import Settings

DATASTORE_ID = DEMO_DATASTORE_ID
PRINCIPALS = tuple(f"bench-{index:02d}" for index in range(10))
"""Benchmark callers, each granted metadata-editor on the benchmark data store."""
AWS_ENV = EMULATOR_AWS_ENV


@dataclass(frozen=True)
class StackOptions:
    """What to start."""

    image_sets: int
    """Image sets seeded (fresh copies of pydicom's samples)."""
    update_delay: float = 0.001
    """Seconds the emulator takes to apply an update. Not 0: the emulator's lazy clock finishes
    an immediate update at the next call and stamps it then, so the proxy would learn the delay
    of its own first poll as the typical update duration."""
    quotas: str = "off"
    """'off' (no emulator quotas), 'default' (HealthImaging's), or a TOML snippet of [quotas]."""
    proxy_args: tuple[str, ...] = ()
    """Extra `imaging-proxy serve` options."""
    proxy_config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Proxy settings by section (written as TOML, passed as --config); see `proxy_toml`."""
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
    children: list[processes.Child] = field(default_factory=list)
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
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.emulator_url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

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
    children: list[processes.Child] = []
    keep = True
    try:
        started = _start(options, log_dir, children)
        yield started
        keep = started.keep_logs
    finally:
        for child in reversed(children):
            child.stop(timeout=60)
        if keep:
            print(f"process logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _start(options: StackOptions, log_dir: Path, children: list[processes.Child]) -> Stack:
    opa_port, emulator_port = processes.free_port(), processes.free_port()
    children.append(processes.start_opa(log_dir, opa_port, _policies_with_grants(log_dir)))
    redis_url = ""
    if options.redis:
        redis_child, redis_url = _start_redis(log_dir)
        children.append(redis_child)
    emulator, seeded = processes.start_emulator(
        log_dir, emulator_port, _emulator_args(options, log_dir)
    )
    children.append(emulator)
    endpoints = []
    for index in range(options.replicas):
        opa_url = f"http://127.0.0.1:{opa_port}"
        args = _proxy_args(options, log_dir, opa_url, seeded["url"], redis_url)
        child, port = _start_proxy(options, log_dir, index, args)
        children.append(child)
        endpoints.append(f"127.0.0.1:{port}")
    return Stack(
        endpoints=endpoints,
        datastore_id=seeded["datastoreId"],
        image_set_ids=list(seeded["imageSetIds"]),
        emulator_url=seeded["url"],
        opa_url=f"http://127.0.0.1:{opa_port}",
        redis_url=redis_url,
        log_dir=log_dir,
        children=children,
    )


def _policies_with_grants(log_dir: Path) -> Path:
    """A copy of policies/ whose data.json also grants metadata-editor to the bench principals."""
    target = log_dir / "policies"
    shutil.copytree(processes.find_policies(), target)
    data_file = target / "data.json"
    data = json.loads(data_file.read_text())
    grants = data["imaging"]["grants"].setdefault(DATASTORE_ID, {})
    # The benchmarks use development identity: x-dev-principal NAME is the principal dev:NAME.
    grants.update({f"dev:{principal}": ["metadata-editor"] for principal in PRINCIPALS})
    data_file.write_text(json.dumps(data, indent=2))
    return target


def _emulator_args(options: StackOptions, log_dir: Path) -> list[str]:
    args = ["--datastore-id", DATASTORE_ID, "--non-primary"]
    args += ["--update-delay", str(options.update_delay)]
    args += ["--seed", str(seed_folder(options.image_sets, log_dir / "seed"))]
    if options.quotas == "off":
        args.append("--no-quotas")
    elif options.quotas != "default":
        config = log_dir / "emulator.toml"
        config.write_text(options.quotas)
        args += ["--config", str(config)]
    return args


def seed_folder(count: int, folder: Path) -> Path:
    """`count` DICOM files, each its own study (so its own image set), in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [dcmread(str(get_testdata_file(name))) for name in DEMO_SAMPLES]
    for index in range(count):
        dataset = samples[index % len(samples)]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(dataset, keyword, generate_uid())
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(folder / f"study-{index:05d}.dcm")
    return folder


def _proxy_args(
    options: StackOptions, log_dir: Path, opa_url: str, emulator_url: str, redis_url: str
) -> list[str]:
    args = ["--port", "0", "--insecure-dev-identity", "--opa-url", opa_url]
    args += ["--endpoint-url", emulator_url]
    sections = {name: dict(values) for name, values in options.proxy_config.items()}
    if options.quotas == "off":  # no emulator quotas: the proxy's own budgets would only throttle
        sections.setdefault("budget", {}).setdefault("enabled", False)
    if redis_url:  # replicas share the journal and the quota budget
        sections.setdefault("journal", {}).setdefault("url", redis_url)
        sections.setdefault("budget", {}).setdefault("url", redis_url)
    config = log_dir / "proxy.toml"
    config.write_text(proxy_toml(sections))
    return [*args, "--config", str(config), *options.proxy_args]


def proxy_toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """Settings as TOML, leaving out sections this checkout's proxy does not have (yet)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    lines = []
    for name, values in sections.items():
        if name not in known:
            print(f"note: the proxy has no [{name}] settings; left out", file=sys.stderr)
            continue
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _start_proxy(
    options: StackOptions, log_dir: Path, index: int, args: Sequence[str]
) -> tuple[processes.Child, int]:
    replica_dir = log_dir / f"proxy-{index}"
    replica_dir.mkdir()
    if index == 0 and options.profile is not None:
        # pyinstrument samples the event loop's thread every 1 ms; the session is saved on exit.
        wrapper = ["-m", "pyinstrument", "--renderer=pyisession", "--outfile", str(options.profile)]
        return _start_wrapped_proxy(
            replica_dir, [*wrapper, "-m", "service.cli.main"], args, options.proxy_env
        )
    if index == 0 and options.trace_memory is not None:
        wrapper = ["-m", "benchmarks.traced_proxy", str(options.trace_memory)]
        return _start_wrapped_proxy(replica_dir, wrapper, args, options.proxy_env)
    child, port = processes.start_proxy(replica_dir, args, {**AWS_ENV, **options.proxy_env})
    child.name = f"proxy-{index}"
    return child, port


def _start_wrapped_proxy(
    log_dir: Path, wrapper: Sequence[str], args: Sequence[str], env: Mapping[str, str]
) -> tuple[processes.Child, int]:
    """`python <wrapper> serve <args>`: the proxy under a profiler."""
    ready_file = log_dir / "proxy-ready.json"
    argv = [sys.executable, *wrapper, "serve", "--ready-file", str(ready_file), *args]
    child = processes.spawn("proxy-0", argv, log_dir, {**AWS_ENV, **env})
    processes.wait_until(lambda: bool(processes.read_json(ready_file)), child)
    return child, int(processes.read_json(ready_file)["port"])


def _start_redis(log_dir: Path) -> tuple[processes.Child, str]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise FileNotFoundError("redis-server not found: `make redis` installs it")
    port = processes.free_port()
    argv = [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    child = processes.spawn("redis", [*argv, "--appendonly", "no"], log_dir)
    processes.wait_until(lambda: _accepts(port), child)
    return child, f"redis://127.0.0.1:{port}/0"


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
