"""`imaging-proxy demo`: real OPA, the seeded emulator and the proxy, supervised, on defaults."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from imaging_proxy_client.cli.program import program

from devstack.processes import Child, stop_all
from devstack.seeds import SAMPLES, samples_then_copies
from devstack.servers import EMULATOR_AWS_ENV, find_opa, find_policies
from devstack.stack import StackSpec, start_stack
from service.cli.readyfile import write_json_atomically


def add_demo_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = verbs.add_parser(
        "demo",
        help="run OPA, the emulator and the proxy together (what `make run` does)",
        description="Start a real OPA server with the policies (reloaded when they change), the "
        "HealthImaging emulator seeded from pydicom's sample DICOM files, and the proxy with "
        "development identity. Ctrl-C stops all three.",
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
    demo.add_argument(
        "--log-dir",
        type=Path,
        help="where child logs and the journal go, kept on exit (default: a temporary folder, "
        "removed on a clean exit)",
    )
    demo.add_argument(
        "--policies",
        type=Path,
        help="OPA's policy folder (default: a checkout's policies/, else the installed copy)",
    )
    demo.add_argument(
        "--opa",
        help="the OPA binary (default: `opa` on PATH, else a checkout's .tools/bin/opa)",
    )
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
    temporary = args.log_dir is None
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="imaging-proxy-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    code = _supervise(args, log_dir)
    if temporary and code != 0 and any(log_dir.iterdir()):
        print(f"imaging-proxy demo: logs kept in {log_dir}", file=sys.stderr)  # for the post-mortem
    elif temporary:
        shutil.rmtree(log_dir, ignore_errors=True)
    return code


def _supervise(args: argparse.Namespace, log_dir: Path) -> int:
    """Start everything, wait for Ctrl-C or a child's death, stop everything; the exit code."""
    children: list[Child] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        ready = _start_all(args, log_dir, children)
        if args.ready_file:
            write_json_atomically(args.ready_file, ready)
        print(_banner(ready), flush=True)
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
    policies = args.policies or find_policies()
    if not policies.is_dir():
        raise FileNotFoundError(f"--policies {policies} is not a folder")
    spec = StackSpec(
        policies=policies,
        opa=find_opa(args.opa),
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
        "exampleImageSetIds": list(stack.example_image_set_ids),
        "emulatorUrl": stack.emulator_url,
        "opaUrl": stack.opa_url,
        "pids": {c.name: c.pid for c in children},
        "logDir": str(log_dir),
        "policies": str(policies),
    }


def _banner(ready: dict[str, object]) -> str:
    image_sets = _strings(ready["imageSetIds"])
    lines = [
        "",
        "imaging-proxy demo is running (development identity: callers are x-dev-principal).",
        f"  proxy (gRPC)   {ready['endpoint']}",
        f"  OPA            {ready['opaUrl']}",
        f"  emulator       {ready['emulatorUrl']}",
        f"  datastore      {ready['datastoreId']}",
        *(f"  image set      {image_set}" for image_set in image_sets[:10]),
        *([f"  … and {len(image_sets) - 10} more"] if len(image_sets) > 10 else []),
        *(f"  AWS example    {example}" for example in _strings(ready["exampleImageSetIds"])),
        f"  policies       {ready['policies']} (reloaded when they change)",
        f"  logs           {ready['logDir']}",
        f"  audit trail    {ready['logDir']}/proxy.audit.jsonl",
        "",
        "Try it (demo-admin may do everything; demo-viewer nothing):",
        _command(_update_example(ready)),
        "",
        "The AWS CLI reads the emulator directly (it ignores signatures: any credentials do):",
        _command(_aws_example(ready)),
        "",
        "Ctrl-C stops all three.",
    ]
    return "\n".join(lines)


def _update_example(ready: dict[str, object]) -> list[list[str]]:
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
    return [
        [*program(), "update-image-set-metadata"],
        ["--endpoint-url", str(ready["endpoint"]), "--dev-principal", "demo-admin"],
        ["--datastore-id", str(ready["datastoreId"])],
        ["--image-set-id", _strings(ready["imageSetIds"])[0], "--latest-version-id", "1"],
        ["--cli-binary-format", "raw-in-base64-out"],
        ["--update-image-set-metadata-updates", updates],
    ]


def _aws_example(ready: dict[str, object]) -> list[list[str]]:
    """`aws medical-imaging get-image-set` against the emulator, pasteable on a bare machine."""
    image_set = [*_strings(ready["exampleImageSetIds"]), *_strings(ready["imageSetIds"])][0]
    credentials = [f"{name}={value}" for name, value in EMULATOR_AWS_ENV.items()]
    return [
        # botocore would prepend `runtime-` to the emulator's host name (AWS's endpoint prefix).
        ["AWS_DISABLE_HOST_PREFIX_INJECTION=true"],
        credentials,
        ["aws", "medical-imaging", "get-image-set", "--endpoint-url", str(ready["emulatorUrl"])],
        ["--datastore-id", str(ready["datastoreId"]), "--image-set-id", image_set],
    ]


def _command(lines: list[list[str]]) -> str:
    """A shell command over several lines, each line's words quoted for pasting."""
    return "  " + " \\\n      ".join(" ".join(_quote(word) for word in line) for line in lines)


def _quote(word: str) -> str:
    """shlex.join's quoting, except `NAME=value` environment assignments stay unquoted."""
    name, equals, value = word.partition("=")
    if equals and name.isidentifier() and name.isupper():
        return f"{name}={shlex.quote(value)}"
    return shlex.quote(word)


def _strings(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(item) for item in value]
