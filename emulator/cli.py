"""`python -m emulator`: run the emulator (serve, the default) or seed DICOM files (seed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from emulator.config import Faults, Settings, load_toml, with_update_delay
from emulator.dicom_import import ImportProblem, build_document, group_by_study, read_instances
from emulator.server import running

_FAULT_FLAGS = [f.name for f in dataclasses.fields(Faults) if f.name != "operations"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["seed"]:
        return _seed_command(args[1:])
    if args[:1] == ["serve"]:
        args = args[1:]
    settings = settings_from_args(_serve_parser().parse_args(args))
    try:
        asyncio.run(serve(settings))
    except ImportProblem as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- serve


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emulator", description="A local AWS HealthImaging.")
    parser.add_argument("--config", type=Path, help="TOML settings file (flags win)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--seed", type=Path, action="append", default=[], help="DICOM file or folder"
    )
    parser.add_argument("--datastore-id", help="id of the seeded data store (default: random)")
    parser.add_argument("--update-delay", type=float, help="seconds before async work completes")
    parser.add_argument("--non-primary", action="store_true", help="seed non-primary image sets")
    parser.add_argument("--ready-file", type=Path, help="written with URL and ids once serving")
    parser.add_argument(
        "--no-quotas", action="store_true", help="turn TPS and concurrency quotas off"
    )
    parser.add_argument("--content-checks", choices=["async", "sync"])
    parser.add_argument("--import-folder", action="append", default=[], metavar="S3URI=FOLDER")
    parser.add_argument("--random-seed", type=int)
    for name in _FAULT_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, dest=name)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_toml(args.config) if args.config else Settings()
    overrides = {
        "host": args.host,
        "port": args.port,
        "datastore_id": args.datastore_id,
        "ready_file": args.ready_file,
        "content_checks": args.content_checks,
        "random_seed": args.random_seed,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.seed:
        settings = dataclasses.replace(settings, seeds=(*settings.seeds, *args.seed))
    if args.non_primary:
        settings = dataclasses.replace(settings, seed_primary=False)
    if args.update_delay is not None:
        settings = with_update_delay(settings, args.update_delay)
    if args.no_quotas:
        settings = dataclasses.replace(
            settings, quotas=dataclasses.replace(settings.quotas, enforce=False)
        )
    folders = dict(settings.import_folders)
    folders.update(_folder_mapping(spec) for spec in args.import_folder)
    faults = {n: getattr(args, n) for n in _FAULT_FLAGS if getattr(args, n) is not None}
    return dataclasses.replace(
        settings, import_folders=folders, faults=dataclasses.replace(settings.faults, **faults)
    )


def _folder_mapping(spec: str) -> tuple[str, Path]:
    uri, sep, folder = spec.partition("=")
    if not sep:
        raise SystemExit(f"--import-folder needs S3URI=FOLDER, got {spec!r}")
    return uri, Path(folder)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set)."""
    async with running(settings) as emulator:
        stop = stop or _stop_on_signals()
        ready = json.dumps(emulator.ready_document())
        print(ready, flush=True)
        if settings.ready_file is not None:
            _write_atomically(settings.ready_file, ready)
        await stop.wait()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- seed


def _seed_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emulator seed",
        description="Import DICOM files into a running emulator (or print the documents).",
    )
    parser.add_argument("paths", type=Path, nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the running emulator")
    parser.add_argument("--datastore-id")
    parser.add_argument("--image-set-id")
    parser.add_argument("--non-primary", action="store_true")
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print the metadata documents; no server needed",
    )
    args = parser.parse_args(argv)
    if args.print_only:
        return _print_documents(args.paths)
    body = {
        "paths": [str(p.resolve()) for p in args.paths],
        "datastoreId": args.datastore_id,
        "imageSetId": args.image_set_id,
        "isPrimary": not args.non_primary,
    }
    return _post_seed(args.url, {k: v for k, v in body.items() if v is not None})


def _print_documents(paths: Sequence[Path]) -> int:
    try:
        studies = group_by_study(read_instances(paths))
    except ImportProblem as exc:
        print(f"emulator seed: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps({uid: build_document(instances) for uid, instances in studies.items()}, indent=2)
    )
    return 0


def _post_seed(url: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"{url}/_emulator/seed",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as exc:
        print(f"emulator seed: {exc.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"emulator seed: cannot reach {url}: {exc.reason}", file=sys.stderr)
        return 1
    return 0
