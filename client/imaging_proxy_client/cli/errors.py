"""Client-side errors of the AWS-compatible verbs, each carrying the AWS CLI return code it ends in.

    CliError                 255  anything else (connection failures, timeouts, surprises)
    ├── UsageError           252  bad command syntax: missing or unknown options
    ├── ParamError           252  an unparsable parameter: shorthand, JSON, YAML, file://
    ├── ParamValidationError 252  parameters that parse but do not fit the operation's shape
    ├── ConfigError          253  bad environment or configuration (files, variables, TLS material)
    └── ServiceError         254  the proxy answered with an error (policy denial, conflict, ...)

The return codes are the AWS CLI v2's documented ones; 130 (Ctrl-C) is handled by the verbs.
Messages never carry attribute values: blobs and JSON documents are patient data.
"""

from __future__ import annotations

from collections.abc import Sequence

SUCCESS_RC = 0
PARAM_VALIDATION_ERROR_RC = 252
CONFIGURATION_ERROR_RC = 253
CLIENT_ERROR_RC = 254
GENERAL_ERROR_RC = 255
INTERRUPTED_RC = 130


class CliError(Exception):
    """Base of the client verbs' errors; `str()` is what goes to stderr."""

    exit_code = GENERAL_ERROR_RC


class ParamError(CliError):
    """One command-line parameter could not be parsed."""

    exit_code = PARAM_VALIDATION_ERROR_RC

    def __init__(self, cli_name: str, message: str) -> None:
        super().__init__(f"Error parsing parameter '{cli_name}': {message}")
        self.cli_name = cli_name


class UsageError(CliError):
    """The command line itself is wrong (missing or unknown options), as argparse reports it."""

    exit_code = PARAM_VALIDATION_ERROR_RC


class ParamValidationError(CliError):
    """The parameters parsed but do not fit the operation (botocore's report format)."""

    exit_code = PARAM_VALIDATION_ERROR_RC

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("Parameter validation failed:\n" + "\n".join(problems))
        self.problems = tuple(problems)


class ConfigError(CliError):
    """The environment or configuration is unusable (missing files, bad variables)."""

    exit_code = CONFIGURATION_ERROR_RC


class ServiceError(CliError):
    """The proxy (or HealthImaging behind it) answered with an error."""

    exit_code = CLIENT_ERROR_RC

    def __init__(self, code: str, operation: str, message: str) -> None:
        super().__init__(
            f"An error occurred ({code}) when calling the {operation} operation: {message}"
        )
        self.code = code
        self.operation = operation
        self.message = message


class EndpointError(CliError):
    """The proxy could not be reached, or went silent for longer than allowed."""

    exit_code = GENERAL_ERROR_RC
