"""The AWS-CLI-compatible client verbs: update-image-set-metadata, watch-update, evaluate-update.

`imaging-proxy update-image-set-metadata` takes the options of `aws medical-imaging
update-image-set-metadata` and goes through the proxy, following the update until it finishes.
Return codes are the AWS CLI's: 0, 252 syntax, 253 configuration, 254 service error, 255 other,
130 Ctrl-C (the update goes on; re-attach with watch-update).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from imaging_proxy_client.cli import help as client_help
from imaging_proxy_client.cli.config import resolve_connection
from imaging_proxy_client.cli.connection import Connection, Tracker, evaluate, follow_update
from imaging_proxy_client.cli.errors import (
    INTERRUPTED_RC,
    PARAM_VALIDATION_ERROR_RC,
    CliError,
    ServiceError,
    UsageError,
)
from imaging_proxy_client.cli.parameters import params, shapes
from imaging_proxy_client.cli.printing import why
from imaging_proxy_client.cli.printing.output import (
    OutputSettings,
    compile_query,
    evaluation,
    image_set_state,
    print_response,
    resolve_output,
    resolve_pager,
)
from imaging_proxy_client.cli.printing.progress import Progress
from imaging_proxy_client.client import build_request
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

LOG = logging.getLogger("imaging_proxy.cli")
LOG_FORMAT = "%(asctime)s - %(threadName)s - %(name)s - %(levelname)s - %(message)s"
T = TypeVar("T")


class ClientArgumentParser(argparse.ArgumentParser):
    """Exits 252 on bad syntax (the AWS CLI's code) and rejects unknown options itself."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(
            f"\nusage: {self.prog} [options]\nTo see help text, you can run:\n\n"
            f"  {self.prog} --help\n\n"
        )
        self.exit(PARAM_VALIDATION_ERROR_RC, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"Unknown options: {', '.join(extras)}")
        return parsed, []


def add_client_verbs(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the three client verbs on the `imaging-proxy` command."""
    update = add_verb(subparsers, "update-image-set-metadata", client_help.UPDATE)
    _add_update_options(update)
    update.add_argument("--no-wait", action="store_true", help=client_help.NO_WAIT)
    update.add_argument("--idempotency-key", metavar="<value>", help=client_help.IDEMPOTENCY_KEY)
    add_common_options(update, skeleton=True)
    update.set_defaults(run=run_update)

    watch = add_verb(subparsers, "watch-update", client_help.WATCH)
    watch.add_argument("--operation-id", metavar="<value>", help=client_help.OPERATION_ID)
    add_common_options(watch, skeleton=True)
    watch.set_defaults(run=run_watch)

    dry_run = add_verb(subparsers, "evaluate-update", client_help.EVALUATE)
    _add_update_options(dry_run)
    dry_run.add_argument(
        "--include-policy-input", action="store_true", help=client_help.INCLUDE_POLICY_INPUT
    )
    add_common_options(dry_run, skeleton=True)
    dry_run.set_defaults(run=run_evaluate)


def add_verb(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    text: client_help.VerbHelp,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=text.summary,
        usage=text.synopsis,
        description=text.description,
        epilog=text.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # argparse builds sub-parsers with the parent's class; only the client verbs take the AWS
    # CLI's return codes, so the class is swapped here rather than in main.py.
    parser.__class__ = ClientArgumentParser
    parser.set_defaults(client_prog=parser.prog)
    return parser


def _on_off(group: argparse._ArgumentGroup, flag: str, helptext: str) -> None:
    """`--flag` and the AWS CLI's hidden `--no-flag`, exclusive; unset stays None."""
    pair = group.add_mutually_exclusive_group()
    dest = flag.replace("-", "_")
    pair.add_argument(f"--{flag}", dest=dest, action="store_const", const=True, help=helptext)
    pair.add_argument(
        f"--no-{flag}", dest=dest, action="store_const", const=False, help=argparse.SUPPRESS
    )


def _add_update_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operation options")
    for name, helptext in client_help.UPDATE_OPTIONS:
        group.add_argument(name, metavar="<value>", help=helptext)
    _on_off(group, "force", client_help.FORCE)
    _on_off(group, "include-study-image-sets", client_help.INCLUDE_STUDY)
    why.add_why_options(parser)
    group.add_argument(
        "--cli-binary-format",
        choices=params.BINARY_FORMATS,
        default="base64",
        help=client_help.BINARY_FORMAT,
    )


def add_common_options(parser: argparse.ArgumentParser, skeleton: bool) -> None:
    _add_input_options(parser, skeleton)
    _add_output_options(parser)
    _add_connection_options(parser)
    _add_aws_only_options(parser)


def _add_input_options(parser: argparse.ArgumentParser, skeleton: bool) -> None:
    group = parser.add_argument_group("input options")
    cli_input = group.add_mutually_exclusive_group()
    cli_input.add_argument("--cli-input-json", metavar="<value>", help=client_help.CLI_INPUT_JSON)
    cli_input.add_argument("--cli-input-yaml", metavar="<value>", help=client_help.CLI_INPUT_YAML)
    if skeleton:
        group.add_argument(
            "--generate-cli-skeleton",
            nargs="?",
            const="input",
            choices=("input", "yaml-input", "output"),
            help=client_help.SKELETON,
        )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output options")
    group.add_argument("--output", metavar="<value>", help=client_help.OUTPUT)
    group.add_argument("--query", metavar="<value>", help=client_help.QUERY)
    group.add_argument(
        "--color", choices=("on", "off", "auto"), default="auto", help=client_help.COLOR
    )
    group.add_argument("--no-cli-pager", action="store_true", help=client_help.NO_PAGER)
    group.add_argument("--debug", action="store_true", help=client_help.DEBUG)
    group.add_argument("--version", action="version", version=client_help.version_string())


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection options (the proxy)")
    group.add_argument("--endpoint-url", metavar="<value>", help=client_help.ENDPOINT)
    group.add_argument("--ca-bundle", metavar="<value>", help=client_help.CA_BUNDLE)
    group.add_argument("--no-verify-ssl", action="store_true", help=client_help.NO_VERIFY)
    group.add_argument("--client-cert", metavar="<value>", help=client_help.CLIENT_CERT)
    group.add_argument("--client-key", metavar="<value>", help=client_help.CLIENT_KEY)
    group.add_argument("--token", metavar="<value>", help=client_help.TOKEN)
    group.add_argument("--dev-principal", metavar="<value>", help=client_help.DEV_PRINCIPAL)
    timeout = _non_negative_seconds
    group.add_argument(
        "--cli-connect-timeout",
        type=timeout,
        default=60.0,
        metavar="<value>",
        help=client_help.CONNECT_TIMEOUT,
    )
    group.add_argument(
        "--cli-read-timeout",
        type=timeout,
        default=60.0,
        metavar="<value>",
        help=client_help.READ_TIMEOUT,
    )
    retry_help = client_help.RETRY_TIMEOUT
    group.add_argument("--cli-retry-timeout", type=timeout, metavar="<value>", help=retry_help)


def _add_aws_only_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "AWS CLI options handled by the proxy's own configuration",
        client_help.AWS_ONLY,
    )
    for name in ("--profile", "--region"):
        group.add_argument(name, metavar="<value>", help=client_help.AWS_ONLY_OPTIONS[name])
    for name in ("--no-sign-request", "--no-paginate", "--cli-auto-prompt", "--no-cli-auto-prompt"):
        group.add_argument(name, action="store_true", help=client_help.AWS_ONLY_OPTIONS[name])


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more: {text!r}")
    return value


# --- running a verb -------------------------------------------------------------------------


def run_update(args: argparse.Namespace) -> int:
    return guarded(args, _update)


def run_watch(args: argparse.Namespace) -> int:
    return guarded(args, _watch)


def run_evaluate(args: argparse.Namespace) -> int:
    return guarded(args, _evaluate)


def guarded(args: argparse.Namespace, verb: Callable[[argparse.Namespace], int]) -> int:
    """Run a verb; turn its errors into the AWS CLI's stderr line and return code."""
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format=LOG_FORMAT, stream=sys.stderr)
        LOG.debug(
            "options given: %s", sorted(k for k, v in vars(args).items() if v not in (None, False))
        )
    try:
        return verb(args)
    except CliError as exc:
        LOG.debug("exiting with rc %d", exc.exit_code, exc_info=True)
        sys.stderr.write(f"\n{exc}\n")
        return exc.exit_code


def output_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> OutputSettings:
    return OutputSettings(
        output=resolve_output(args.output, environ),
        query=compile_query(args.query),
        color=args.color,
        pager=resolve_pager(args.no_cli_pager, environ),
    )


def _printed_skeleton(args: argparse.Namespace, shape: shapes.Shape) -> bool:
    if args.generate_cli_skeleton == "input":
        sys.stdout.write(_json(shapes.input_skeleton(shape)))
    elif args.generate_cli_skeleton == "yaml-input":
        sys.stdout.write(shapes.yaml_input_skeleton(shape))
    else:
        return False
    return True


def _json(data: Any) -> str:
    return json.dumps(data, indent=4) + "\n"


def _command_line_update_params(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for key, value in (
        ("datastoreId", args.datastore_id),
        ("imageSetId", args.image_set_id),
        ("latestVersionId", args.latest_version_id),
        ("force", args.force),
        ("includeStudyImageSets", args.include_study_image_sets),
    ):
        if value is not None:
            given[key] = value
    raw = args.update_image_set_metadata_updates
    if raw is not None:
        cli_name = "--update-image-set-metadata-updates"
        given["updateImageSetMetadataUpdates"] = params.parse_structure(
            cli_name, params.resolve_argument(cli_name, raw)
        )
    return given


def merged_input(
    args: argparse.Namespace, command_line: dict[str, Any], shape: shapes.Shape
) -> dict[str, Any]:
    cli_input = params.load_cli_input(args.cli_input_json, args.cli_input_yaml)
    if not cli_input:
        missing = [m.cli_name for m in shape.members if m.required and m.name not in command_line]
        if missing:
            raise UsageError(
                f"{args.client_prog}: error: the following arguments are required: "
                + ", ".join(missing)
            )
    return params.merge_input(command_line, cli_input)


def _update_params(args: argparse.Namespace) -> params.UpdateParams:
    merged = merged_input(args, _command_line_update_params(args), shapes.UPDATE_INPUT)
    update = params.update_params(merged, args.cli_binary_format)
    LOG.debug(
        "request: datastore %s, image set %s, version %s, force %s, study %s, updatable %s bytes, "
        "removable %s bytes, revert to %s",
        update.datastore_id,
        update.image_set_id,
        update.latest_version_id,
        update.force,
        update.include_study_image_sets,
        _size(update.dicom_updates.updatable_attributes if update.dicom_updates else None),
        _size(update.dicom_updates.removable_attributes if update.dicom_updates else None),
        update.revert_to_version_id,
    )
    return update


def _size(blob: bytes | None) -> str:
    return "-" if blob is None else str(len(blob))


def to_request(
    update: params.UpdateParams, idempotency_key: str
) -> metadata_pb2.UpdateImageSetMetadataRequest:
    """The validated parameters as the proxy's request message."""
    dicom = update.dicom_updates
    request = build_request(
        update.datastore_id,
        update.image_set_id,
        update.latest_version_id,
        updatable=dicom.updatable_attributes if dicom else None,
        removable=dicom.removable_attributes if dicom else None,
        revert_to_version_id=update.revert_to_version_id,
        force=update.force,
        include_study_image_sets=update.include_study_image_sets,
        idempotency_key=idempotency_key,
    )
    if dicom is not None and update.revert_to_version_id is None:
        # An empty DICOMUpdates is still sent, so the proxy names what is missing.
        request.dicom_updates.SetInParent()
    return request


def _update(args: argparse.Namespace) -> int:
    out = output_settings(args, os.environ)
    if _printed_skeleton(args, shapes.UPDATE_INPUT):
        return 0
    update = _update_params(args)
    if args.generate_cli_skeleton == "output":
        print_response(
            shapes.output_skeleton(shapes.IMAGE_SET_STATE_OUTPUT), "UpdateImageSetMetadata", out
        )
        return 0
    conn = resolve_connection(args, os.environ)
    tracker = Tracker(idempotency_key=args.idempotency_key or str(uuid.uuid4()))
    LOG.debug("idempotency key %s", tracker.idempotency_key)
    request = to_request(update, tracker.idempotency_key)
    why.apply_why(args, request)
    hint = client_help.reattach_options(args)
    return _follow(conn, request, tracker, out, "UpdateImageSetMetadata", args.no_wait, hint)


def _watch(args: argparse.Namespace) -> int:
    out = output_settings(args, os.environ)
    if _printed_skeleton(args, shapes.WATCH_INPUT):
        return 0
    command_line = {} if args.operation_id is None else {"operationId": args.operation_id}
    merged = merged_input(args, command_line, shapes.WATCH_INPUT)
    merged = shapes.prune(merged, shapes.WATCH_INPUT)
    shapes.validate(merged, shapes.WATCH_INPUT)
    if args.generate_cli_skeleton == "output":
        print_response(shapes.output_skeleton(shapes.IMAGE_SET_STATE_OUTPUT), "WatchUpdate", out)
        return 0
    conn = resolve_connection(args, os.environ)
    tracker = Tracker(idempotency_key="", operation_id=merged["operationId"])
    hint = client_help.reattach_options(args)
    return _follow(conn, None, tracker, out, "WatchUpdate", False, hint)


def _evaluate(args: argparse.Namespace) -> int:
    out = output_settings(args, os.environ)
    if _printed_skeleton(args, shapes.UPDATE_INPUT):
        return 0
    update = _update_params(args)
    if args.generate_cli_skeleton == "output":
        print_response(shapes.output_skeleton(shapes.EVALUATION_OUTPUT), "EvaluateUpdate", out)
        return 0
    conn = resolve_connection(args, os.environ)
    request = to_request(update, "")
    why.apply_why(args, request)
    request.include_policy_input = args.include_policy_input
    try:
        result = asyncio.run(evaluate(conn, request))
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted: nothing was submitted (evaluate-update is a dry run).\n")
        return INTERRUPTED_RC
    print_response(evaluation(result), "EvaluateUpdate", out)
    return 0


def _follow(
    conn: Connection,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    out: OutputSettings,
    operation: str,
    until_submitted: bool,
    hint_options: list[str],
) -> int:
    progress = Progress(sys.stderr, live=sys.stderr.isatty())
    try:
        state = asyncio.run(
            _with_ticker(progress, follow_update(conn, request, tracker, progress, until_submitted))
        )
    except KeyboardInterrupt:
        progress.close()
        sys.stderr.write(client_help.interrupted(tracker, hint_options))
        return INTERRUPTED_RC
    finally:
        progress.close()
    print_response(image_set_state(state), operation, out)
    if state.image_set_workflow_status == "UPDATE_FAILED":
        raise ServiceError("UPDATE_FAILED", operation, state.message or "the update failed")
    return 0


async def _with_ticker(progress: Progress, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` while the live status line's clock ticks once a second."""
    ticker = asyncio.create_task(_tick(progress))
    try:
        return await work
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


async def _tick(progress: Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress.tick()
