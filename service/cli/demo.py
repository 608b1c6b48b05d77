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

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service.cli import processes

DEMO_DATASTORE_ID = "12345678901234567890123456789012"  # the id of the AWS CLI examples
DEMO_SAMPLES = ("CT_small.dcm", "MR_small.dcm")
# Fake credentials: the emulator ignores signatures, botocore still wants something to sign with.
EMULATOR_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "emulator",
    "AWS_SECRET_ACCESS_KEY": "emulator",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
        default=len(DEMO_SAMPLES),
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
    children: list[processes.Child] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        ready = _start_all(args, log_dir, children)
        if args.ready_file:
            processes.write_json_atomically(args.ready_file, ready)
        print(_banner(ready, log_dir), flush=True)
        while not stop.wait(0.5):
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                print(f"{dead[0].name} exited; see {dead[0].log_path}", file=sys.stderr)
                return 1
        print("\nStopping proxy, emulator and OPA…", file=sys.stderr)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"imaging-proxy demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):  # proxy first, then emulator, then OPA
            child.stop()


def _start_all(
    args: argparse.Namespace, log_dir: Path, children: list[processes.Child]
) -> dict[str, object]:
    opa_port, emulator_port = processes.free_port(), processes.free_port()
    children.append(processes.start_opa(log_dir, opa_port))
    emulator, seeded = processes.start_emulator(
        log_dir,
        emulator_port,
        _emulator_args(args, log_dir),
    )
    children.append(emulator)
    proxy_args = [
        "--port",
        str(args.port),
        "--insecure-dev-identity",
        "--opa-url",
        f"http://127.0.0.1:{opa_port}",
        "--endpoint-url",
        seeded["url"],
        "--data-dir",
        str(log_dir / "journal"),
        *(["--no-budget"] if args.no_quotas else []),
        *args.proxy_arg,
    ]
    proxy, port = processes.start_proxy(log_dir, proxy_args, EMULATOR_AWS_ENV)
    children.append(proxy)
    return {
        "endpoint": f"127.0.0.1:{port}",
        "datastoreId": seeded["datastoreId"],
        "imageSetIds": seeded["imageSetIds"],
        "emulatorUrl": seeded["url"],
        "opaUrl": f"http://127.0.0.1:{opa_port}",
        "pids": {c.name: c.pid for c in children},
        "logDir": str(log_dir),
    }


def _emulator_args(args: argparse.Namespace, log_dir: Path) -> list[str]:
    seeds = _seed_files(args.image_sets, log_dir / "seed")
    options = ["--datastore-id", DEMO_DATASTORE_ID, "--non-primary"]
    options += ["--update-delay", str(args.update_delay)]
    options += ["--no-quotas"] if args.no_quotas else []
    return [*options, *(f"--seed={path}" for path in seeds), *args.emulator_arg]


def _seed_files(count: int, folder: Path) -> list[Path]:
    """pydicom's samples, then copies of them with fresh UIDs: one image set each."""
    samples = [Path(str(get_testdata_file(name))) for name in DEMO_SAMPLES]
    if count <= len(samples):
        return samples[:count]
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count - len(samples)):
        dataset = dcmread(samples[index % len(samples)])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(dataset, keyword, generate_uid())
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        copies.append(folder / f"copy-{index:05d}.dcm")
        dataset.save_as(copies[-1])
    return [*samples, *copies]


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
