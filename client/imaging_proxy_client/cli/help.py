"""Help texts of the client verbs, worded after the AWS CLI reference pages they replace."""

from __future__ import annotations

import argparse
import platform
import shlex
from dataclasses import dataclass
from importlib import metadata

from imaging_proxy_client.cli.connection import Tracker
from imaging_proxy_client.cli.program import program


@dataclass(frozen=True)
class VerbHelp:
    """What `--help` shows for one verb."""

    summary: str
    description: str
    epilog: str
    synopsis: str


DISTRIBUTIONS = ("imaging-proxy-client", "imaging-proxy")
"""The client always; the server when it is installed too."""


def version_string() -> str:
    """In the AWS CLI's form: `imaging-proxy-client/0.1.0 imaging-proxy/0.1.0 Python/3.11.2
    Linux/…`."""
    installed = []
    for name in DISTRIBUTIONS:
        try:
            installed.append(f"{name}/{metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    system = f"{platform.system()}/{platform.release()}"
    return " ".join([*installed, f"Python/{platform.python_version()}", system])


_COMMON_SYNOPSIS = """\
  [--cli-input-json <value> | --cli-input-yaml <value>]
  [--generate-cli-skeleton <value>]
  [--output <value>] [--query <value>] [--color <value>] [--no-cli-pager]
  [--debug] [--version]
  [--endpoint-url <value>] [--ca-bundle <value>] [--no-verify-ssl]
  [--client-cert <value> --client-key <value>] [--token <value>]
  [--dev-principal <value>]
  [--cli-connect-timeout <value>] [--cli-read-timeout <value>]
  [--cli-retry-timeout <value>]
  [--profile <value>] [--region <value>] [--no-sign-request] [--no-paginate]
  [--cli-auto-prompt] [--no-cli-auto-prompt]"""
_UPDATE_SYNOPSIS = """\
  --datastore-id <value>
  --image-set-id <value>
  --latest-version-id <value>
  [--force | --no-force]
  [--include-study-image-sets | --no-include-study-image-sets]
  --update-image-set-metadata-updates <value>
  [--cli-binary-format <value>]
  [--purpose-of-use <value>] [--justification <value>] [--ticket <value>]
  [--break-glass]
"""

OUTPUT_SECTION = """\
OUTPUT
  datastoreId -> (string)
    The data store identifier.
  imageSetId -> (string)
    The image set identifier.
  latestVersionId -> (string)
    The latest image set version identifier.
  imageSetState -> (string)
    The image set state.
  imageSetWorkflowStatus -> (string)
    The image set workflow status.
  createdAt -> (timestamp)
    The timestamp when image set metadata was created (epoch seconds, as the AWS CLI prints it).
  updatedAt -> (timestamp)
    The timestamp when image set metadata was updated.
  message -> (string)
    The error message thrown if an update image set metadata action fails.
"""

RETURN_CODES = """\
RETURN CODES (the AWS CLI's)
  0    success: the update finished as UPDATED (or, with --no-wait, was submitted)
  252  the command line could not be parsed (options, JSON, shorthand, base64, files)
  253  the environment or configuration is invalid (unreadable certificate files, bad
       IMAGING_PROXY_* or AWS_DEFAULT_OUTPUT variables, a pager that does not start)
  254  the proxy returned an error: policy denial, conflict (stale version, locked image set),
       validation, not found, throttling; or the update finished as UPDATE_FAILED
  255  anything else: the proxy could not be reached, or stayed silent too long
  130  interrupted with Ctrl-C: the update goes on in the proxy; re-attach with
       `imaging-proxy watch-update --operation-id <id>` (the id is printed on stderr)
"""

ENVIRONMENT = """\
ENVIRONMENT
  IMAGING_PROXY_ENDPOINT       default for --endpoint-url (else 127.0.0.1:50051)
  IMAGING_PROXY_TOKEN          default for --token
  IMAGING_PROXY_DEV_PRINCIPAL  default for --dev-principal
  IMAGING_PROXY_CA_BUNDLE, IMAGING_PROXY_CLIENT_CERT, IMAGING_PROXY_CLIENT_KEY
                               defaults for --ca-bundle, --client-cert, --client-key
  IMAGING_PROXY_MAX_ATTEMPTS   attempts while the proxy is unreachable (default 5)
  IMAGING_PROXY_RETRY_TIMEOUT  default for --cli-retry-timeout (seconds; 0 = no limit)
  AWS_DEFAULT_OUTPUT           default for --output, as for the AWS CLI
  AWS_PAGER, PAGER             a pager for terminal output (none by default)
"""

_UPDATE_EXAMPLES = """\
EXAMPLES
  The AWS CLI's examples work unchanged with the command name and --endpoint-url changed,
  plus the caller's identity (--dev-principal against the demo).

  Example 1: To insert or update an attribute in image set metadata

    imaging-proxy update-image-set-metadata \\
        --endpoint-url http://127.0.0.1:50051 \\
        --datastore-id 12345678901234567890123456789012 \\
        --image-set-id ea92b0d8838c72a3f25d00d13616f87e \\
        --latest-version-id 1 \\
        --cli-binary-format raw-in-base64-out \\
        --update-image-set-metadata-updates file://metadata-updates.json

  Contents of metadata-updates.json

    {
        "DICOMUpdates": {
            "updatableAttributes": "{\\"SchemaVersion\\":1.1,\\"Patient\\":{\\"DICOM\\":\
{\\"PatientName\\":\\"MX^MX\\"}}}"
        }
    }

  Output (when the update has finished):

    {
        "datastoreId": "12345678901234567890123456789012",
        "imageSetId": "ea92b0d8838c72a3f25d00d13616f87e",
        "latestVersionId": "2",
        "imageSetState": "ACTIVE",
        "imageSetWorkflowStatus": "UPDATED",
        "createdAt": 1680027126.436,
        "updatedAt": 1680042257.908
    }

  Example 2: To revert an image set to a previous version, without waiting

    imaging-proxy update-image-set-metadata --no-wait \\
        --datastore-id 12345678901234567890123456789012 \\
        --image-set-id 53d5fdb05ca4d46ac7ca64b06545c66e \\
        --latest-version-id 3 \\
        --update-image-set-metadata-updates '{"revertToVersionId": "1"}'

  prints the submit response (imageSetState LOCKED, imageSetWorkflowStatus UPDATING) as the AWS
  CLI does; follow it later with watch-update.

  Example 3: A blob in shorthand syntax, read raw from a file

    imaging-proxy update-image-set-metadata ... \\
        --update-image-set-metadata-updates 'DICOMUpdates={updatableAttributes@=fileb://patient.json}'
"""

UPDATE = VerbHelp(
    summary="Update image set metadata attributes through the proxy and wait until done.",
    description=(
        "Update image set metadata attributes.\n\n"
        "A drop-in for `aws medical-imaging update-image-set-metadata` that goes through the\n"
        "imaging-proxy: the proxy identifies the caller, asks its policy whether this change is\n"
        "allowed, submits it to AWS HealthImaging and streams the image set's status. The command\n"
        "waits until the update has finished (UPDATED or UPDATE_FAILED), showing progress on\n"
        "stderr, and prints the final image set state on stdout; --no-wait prints the submit\n"
        "response instead, exactly as the AWS CLI does."
    ),
    epilog="\n".join((_UPDATE_EXAMPLES, OUTPUT_SECTION, RETURN_CODES, ENVIRONMENT)),
    synopsis="%(prog)s\n"
    + _UPDATE_SYNOPSIS
    + "  [--no-wait] [--idempotency-key <value>]\n"
    + _COMMON_SYNOPSIS,
)
WATCH = VerbHelp(
    summary="Re-attach to an update and wait until it finishes.",
    description=(
        "Re-attach to an update started with update-image-set-metadata (after Ctrl-C, a lost\n"
        "connection or a proxy restart): replays the last known state, follows the update until\n"
        "it finishes and prints the final image set state, as update-image-set-metadata does."
    ),
    epilog="\n".join(
        (
            "EXAMPLE\n  imaging-proxy watch-update --operation-id "
            "0b6c0c3e-2f5a-4f0e-9a53-2d3b1c7f9e10\n",
            OUTPUT_SECTION,
            RETURN_CODES,
            ENVIRONMENT,
        )
    ),
    synopsis="%(prog)s\n  --operation-id <value>\n" + _COMMON_SYNOPSIS,
)
EVALUATE = VerbHelp(
    summary="Dry run: the normalised change list and the policy decision; nothing is submitted.",
    description=(
        "Validate an update and ask the policy about it without submitting anything. Takes the\n"
        "options of update-image-set-metadata and prints the decision (allow, decision id,\n"
        "reasons) and the normalised change list: every touched attribute with its action, level,\n"
        "series and instance UIDs, canonical tag, keyword, VR, whether it is private and whether\n"
        "it requires --force. The return code is 0 when the policy decided, whether or not the\n"
        "change would be allowed (use --query decision.allow to branch on the decision); a call\n"
        "the proxy refuses itself is 254, as for any service error: a caller with no role on the\n"
        "data store (PolicyDeniedException, before its document is read), an invalid request."
    ),
    epilog="\n".join(
        (
            "EXAMPLE\n  imaging-proxy evaluate-update --datastore-id ... --image-set-id ... \\\n"
            "      --latest-version-id 1 --cli-binary-format raw-in-base64-out \\\n"
            "      --update-image-set-metadata-updates file://metadata-updates.json \\\n"
            "      --query decision.allow\n",
            RETURN_CODES,
            ENVIRONMENT,
        )
    ),
    synopsis="%(prog)s\n" + _UPDATE_SYNOPSIS + _COMMON_SYNOPSIS,
)

STEERING_SYNOPSIS = _COMMON_SYNOPSIS.replace("  [--generate-cli-skeleton <value>]\n", "")
LIST = VerbHelp(
    summary="List updates (operations): who is waiting, for what, since when.",
    description=(
        "List the operations the proxy's journal holds, oldest first: your own, or everyone's\n"
        "when the policy lets you see others' (policies/imaging/operations.rego). Filters:\n"
        "--principal, --datastore-id, --image-set-id, --state (awaiting_approval, queued,\n"
        "submitting, submitted, unwatched, finished, failed, cancelled, rejected, expired),\n"
        "--break-glass. Every page is fetched unless --no-paginate is\n"
        "given (then one page of --max-results, and its nextToken for --next-token)."
    ),
    epilog="\n".join(
        (
            "EXAMPLE\n  imaging-proxy list-updates --state queued "
            "--query 'operations[].[operationId,principal,createdAt]' --output table\n",
            OUTPUT_SECTION,
            RETURN_CODES,
            ENVIRONMENT,
        )
    ),
    synopsis="%(prog)s\n  [--principal <value>] [--datastore-id <value>] [--image-set-id <value>]\n"
    "  [--state <value>] [--break-glass] [--max-results <value>] [--next-token <value>]\n"
    + STEERING_SYNOPSIS,
)
GET = VerbHelp(
    summary="Show one update (operation): its state, owner, decision and last image set state.",
    description="Show one operation by id (yours, or another's when the policy allows it).",
    epilog="\n".join((OUTPUT_SECTION, RETURN_CODES, ENVIRONMENT)),
    synopsis="%(prog)s\n  --operation-id <value>\n" + STEERING_SYNOPSIS,
)
CANCEL = VerbHelp(
    summary="Cancel an update that is still queued; nothing is written to HealthImaging.",
    description=(
        "Take back an update still waiting in the proxy's queue: it ends `cancelled`, every\n"
        "stream following it ends, and HealthImaging is never called. An update already\n"
        "submitting or submitted cannot be taken back: FailedPrecondition, rc 254. Cancelling a\n"
        "cancelled update prints it again. Yours, or another's when the policy allows it."
    ),
    epilog="\n".join(
        (
            "EXAMPLE\n  imaging-proxy cancel-update --operation-id "
            "0b6c0c3e-2f5a-4f0e-9a53-2d3b1c7f9e10\n",
            OUTPUT_SECTION,
            RETURN_CODES,
            ENVIRONMENT,
        )
    ),
    synopsis="%(prog)s\n  --operation-id <value>\n" + STEERING_SYNOPSIS,
)

UPDATE_OPTIONS = (
    ("--datastore-id", "(string) The data store identifier."),
    ("--image-set-id", "(string) The image set identifier."),
    ("--latest-version-id", "(string) The latest image set version identifier."),
    (
        "--update-image-set-metadata-updates",
        "(tagged union structure) Update image set metadata updates. Only one of the top level "
        "keys can be set: DICOMUpdates (a structure of removableAttributes and "
        "updatableAttributes blobs: the DICOM tags to be removed from, and to be updated in, "
        "ImageSetMetadata) or revertToVersionId (the previous image set version ID to revert "
        "the current image set back to). Shorthand Syntax: "
        "DICOMUpdates={removableAttributes=blob,updatableAttributes=blob},"
        'revertToVersionId=string. JSON Syntax: {"DICOMUpdates": {"removableAttributes": '
        'blob, "updatableAttributes": blob}, "revertToVersionId": "string"}. Inline, '
        "file://path or fileb://path; in shorthand, key@=file://path reads one value from a file.",
    ),
)
INCLUDE_POLICY_INPUT = (
    "(boolean) Also print the exact input the proxy sends to OPA (policyInput), to turn into\n"
    "an `opa test` case; only when the policy allows you (role policy-author or metadata-admin)."
)
FORCE = (
    "(boolean) Setting this flag will force the UpdateImageSetMetadata operation for the "
    "following attributes: Tag.StudyInstanceUID, Tag.SeriesInstanceUID, Tag.SOPInstanceUID, and "
    "Tag.StudyID; adding, removing, or updating private tags for an individual SOP Instance. "
    "--no-force sends force=false."
)
INCLUDE_STUDY = (
    "(boolean) Apply the metadata updates to all image sets in the same Study as the requested "
    "image set ID. --no-include-study-image-sets sends false."
)
BINARY_FORMAT = (
    "(string) The formatting style to be used for binary blobs. The default format is base64: "
    "a blob given as a string must be base64 encoded. raw-in-base64-out passes the string "
    "literally (the raw JSON document, as in the AWS CLI v2 examples). fileb:// always reads "
    "raw bytes regardless of this setting; file:// contents follow it."
)
NO_WAIT = (
    "Print the submit response (imageSetState LOCKED, imageSetWorkflowStatus UPDATING) as the "
    "AWS CLI does, and exit without waiting for the update to finish."
)
IDEMPOTENCY_KEY = (
    "(string) Makes submits retry-safe: the same key and request return the same operation. "
    "Generated per invocation when absent, so the CLI's own retries never submit twice; give "
    "one to re-attach safely after an interrupted invocation."
)
OPERATION_ID = (
    "(string) The operation to re-attach to, as printed on stderr by update-image-set-metadata."
)
CLI_INPUT_JSON = (
    "(string) Reads arguments from the JSON string provided (inline or file://). The JSON string "
    "follows the format provided by --generate-cli-skeleton. If other arguments are provided on "
    "the command line, those values will override the JSON-provided values. Blobs in it follow "
    "--cli-binary-format. This may not be specified along with --cli-input-yaml."
)
CLI_INPUT_YAML = (
    "(string) Reads arguments from the YAML string provided (inline or file://), in the format "
    "of --generate-cli-skeleton yaml-input. Command-line options override it; a !!binary value "
    "is taken as raw bytes. This may not be specified along with --cli-input-json."
)
SKELETON = (
    "(string) Prints a JSON skeleton to standard output without sending a request. With no "
    "value or the value input, prints a sample input JSON for --cli-input-json; with yaml-input "
    "a sample input YAML for --cli-input-yaml. With the value output, it validates the command "
    "inputs and returns a sample output for that command."
)
OUTPUT = (
    "(string) The formatting style for command output: json (default), text, table, yaml, "
    "yaml-stream."
)
QUERY = "(string) A JMESPath query to use in filtering the response data."
COLOR = (
    "(string) Turn on/off color output (table output): on, off, auto (default: on for a terminal)."
)
NO_PAGER = (
    "(boolean) Disable cli pager for output (a pager is only used when AWS_PAGER or PAGER "
    "names one)."
)
DEBUG = "(boolean) Turn on debug logging (never attribute values: blobs are logged by size)."
ENDPOINT = (
    "(string) The proxy's address: http://host:port (plaintext), https://host:port (TLS) or "
    "host:port (TLS when --ca-bundle or a client certificate is given). Default: "
    "IMAGING_PROXY_ENDPOINT, else 127.0.0.1:50051."
)
CA_BUNDLE = (
    "(string) The CA certificate bundle (PEM) to use when verifying the proxy's certificate."
)
NO_VERIFY = (
    "(boolean) Do not verify the proxy's certificate: the certificate it presents is trusted as "
    "it is (the connection stays encrypted). For development only."
)
CLIENT_CERT = "(string) The client certificate (PEM) for mutual TLS; with --client-key."
CLIENT_KEY = "(string) The private key (PEM) of --client-cert."
TOKEN = "(string) A bearer token (JWT) identifying the caller. Default: IMAGING_PROXY_TOKEN."
DEV_PRINCIPAL = (
    "(string) The caller's principal when the proxy runs in development mode (sent as "
    "x-dev-principal). Default: IMAGING_PROXY_DEV_PRINCIPAL."
)
CONNECT_TIMEOUT = (
    "(int) The maximum time in seconds to establish the connection to the proxy. If the value "
    "is set to 0, connecting is not bounded. The default value is 60 seconds."
)
READ_TIMEOUT = (
    "(int) The longest silence in seconds tolerated on the status stream (the proxy sends "
    "progress at least every few seconds); it does not bound the whole update. If the value is "
    "set to 0, silences are not bounded. The default value is 60 seconds."
)
RETRY_TIMEOUT = (
    "(int) How long in seconds the command keeps retrying (re-submitting or re-attaching) "
    "without the update making progress before it gives up and reports the last error. If the "
    "value is set to 0, retries are not bounded in time. The default value is "
    "IMAGING_PROXY_RETRY_TIMEOUT, else 120 seconds."
)
AWS_ONLY = (
    "Accepted so that AWS CLI command lines work unchanged; they have no effect here. The proxy "
    "holds the AWS credentials, profile and region, and signs the requests to HealthImaging; "
    "callers are identified by mTLS, a bearer token or, in development, --dev-principal."
)
AWS_ONLY_OPTIONS = {
    "--profile": "(string) Accepted; the proxy's own configuration chooses the AWS profile.",
    "--region": "(string) Accepted; the proxy's own configuration chooses the region.",
    "--no-sign-request": "(boolean) Accepted; the proxy signs requests to AWS itself.",
    "--no-paginate": "(boolean) Accepted; this operation is not paginated.",
    "--cli-auto-prompt": "(boolean) Accepted; there is no auto-prompt.",
    "--no-cli-auto-prompt": "(boolean) Accepted; there is no auto-prompt.",
}


def reattach_options(args: argparse.Namespace) -> list[str]:
    """The connection and identity options given on the command line, to repeat in a hint
    (options read from the environment or the config file apply again by themselves)."""
    words: list[str] = []
    for option, value in (
        ("--endpoint-url", args.endpoint_url),
        ("--ca-bundle", args.ca_bundle),
        ("--client-cert", args.client_cert),
        ("--client-key", args.client_key),
        ("--token", args.token),
        ("--dev-principal", args.dev_principal),
    ):
        if value is not None:
            words += [option, value]
    if args.no_verify_ssl:
        words.append("--no-verify-ssl")
    return words


def interrupted(tracker: Tracker, options: list[str]) -> str:
    """What to tell the user after Ctrl-C: the update goes on, and how to re-attach (a command
    that runs as printed: this program, the operation and the identity options)."""
    if tracker.operation_id:
        named = ["--operation-id", tracker.operation_id, *options]
        return (
            "\nInterrupted. The update goes on in the proxy; nothing was cancelled.\n"
            f"Re-attach with: {shlex.join([*program(), 'watch-update', *named])}\n"
            f"Take it back while queued: {shlex.join([*program(), 'cancel-update', *named])}\n"
        )
    return (
        "\nInterrupted before the proxy acknowledged the update; it may or may not have been "
        "received.\nRe-run the same command with --idempotency-key "
        f"{tracker.idempotency_key} to re-attach without submitting it twice.\n"
    )
