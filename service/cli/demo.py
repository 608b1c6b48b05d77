"""`imaging-proxy demo`: real OPA, the seeded emulator and the proxy, supervised, on defaults."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

from service.devstack.processes import Child, stop_all, write_json_atomically
from service.devstack.seeds import SAMPLES, samples_then_copies
from service.devstack.stack import StackSpec, start_stack


def add_demo_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = verbs.add_parser(
        "demo",
        help="run OPA, the emulator and the proxy together (what `make run` does)",
        description="Start a real OPA server with policies/, the HealthImaging emulator seeded "
        "from pydicom's sample DICOM files, and the proxy with development identity. "
        "Ctrl-C stops all three.",
    )
    demo.add_argument("--port", type=int, default=50051, help="proxy port (0 = any free port)")
    demo.add_argument("--ready-file", type=Path, help="write endpoint, ids, URLs and pids here")
    demo.add_argument(
        "--image-sets",
        type=int,
        default=len(SAMPLES),
        help="how many image sets to seed (copies of the samples with fresh UIDs)",
    )
    demo.add_argument(
        "--update-delay",
        type=float,
        default=1.0,
        help="seconds the emulator takes to apply an update",
    )
    demo.add_argument("--log-dir", type=Path, help="where child logs go (default: a temp dir)")
    demo.add_argument(
        "--no-quotas",
        action="store_true",
        help="turn HealthImaging's quotas off in the emulator and pacing off in the proxy",
    )
    demo.add_argument(
        "--emulator-arg",
        action="append",
        default=[],
        help="extra option passed to the emulator (repeatable)",
    )
    demo.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        help="extra option passed to `imaging-proxy serve` (repeatable)",
    )
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="imaging-proxy-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        ready = _start_all(args, log_dir, children)
        if args.ready_file:
            write_json_atomically(args.ready_file, ready)
        print(_banner(ready, log_dir), flush=True)
        while not stop.wait(0.5):
            dead = [c for c in children if not c.running()]
            if dead:
                print(f"{dead[0].name} exited; see {dead[0].log_path}", file=sys.stderr)
                return 1
        print("\nStopping proxy, emulator and OPA…", file=sys.stderr)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"imaging-proxy demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(children)  # proxy first, then emulator, then OPA


def _start_all(args: argparse.Namespace, log_dir: Path, children: list[Child]) -> dict[str, object]:
    spec = StackSpec(
        image_sets=args.image_sets,
        seeds=samples_then_copies,
        update_delay=args.update_delay,
        quotas=not args.no_quotas,
        emulator_args=tuple(args.emulator_arg),
    )
    stack = start_stack(spec, log_dir, children)
    proxy_args = ["--data-dir", str(log_dir / "journal")]
    proxy_args += ["--no-budget"] if args.no_quotas else []
    proxy = stack.add_proxy(log_dir, [*proxy_args, *args.proxy_arg], port=args.port)
    return {
        "endpoint": proxy.endpoint,
        "datastoreId": stack.datastore_id,
        "imageSetIds": list(stack.image_set_ids),
        "emulatorUrl": stack.emulator_url,
        "opaUrl": stack.opa_url,
        "pids": {c.name: c.pid for c in children},
        "logDir": str(log_dir),
    }


def _banner(ready: dict[str, object], log_dir: Path) -> str:
    image_sets = ready["imageSetIds"]
    assert isinstance(image_sets, list)
    updates = json.dumps(
        {
            "DICOMUpdates": {
                "updatableAttributes": json.dumps(
                    {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "MX^MX"}}},
                    separators=(",", ":"),
                )
            }
        }
    )
    example = [
        [".venv/bin/imaging-proxy", "update-image-set-metadata"],
        ["--endpoint-url", str(ready["endpoint"]), "--dev-principal", "demo-admin"],
        ["--datastore-id", str(ready["datastoreId"])],
        ["--image-set-id", str(image_sets[0]), "--latest-version-id", "1"],
        ["--cli-binary-format", "raw-in-base64-out"],
        ["--update-image-set-metadata-updates", updates],
    ]
    lines = [
        "",
        "imaging-proxy demo is running (development identity: callers are x-dev-principal).",
        f"  proxy (gRPC)   {ready['endpoint']}",
        f"  OPA            {ready['opaUrl']}",
        f"  emulator       {ready['emulatorUrl']}",
        f"  datastore      {ready['datastoreId']}",
        *(f"  image set      {image_set}" for image_set in image_sets[:10]),
        *([f"  … and {len(image_sets) - 10} more"] if len(image_sets) > 10 else []),
        f"  logs           {log_dir}",
        "",
        "Try it (demo-admin may do everything; demo-viewer nothing):",
        "  " + " \\\n      ".join(shlex.join(line) for line in example),
        "",
        "Ctrl-C stops all three.",
    ]
    return "\n".join(lines)
