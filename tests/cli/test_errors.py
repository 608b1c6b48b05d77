"""gRPC statuses -> the AWS CLI's error line and return code; syntax and configuration errors."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import grpc
import grpc.aio
import pytest
from imaging_proxy_client.cli.connection import retry_plan, translate
from imaging_proxy_client.cli.errors import EndpointError, ServiceError
from imaging_proxy_client.cli.main import main

from service.backend.healthimaging import _from_client_error
from service.core import errors
from service.transport.grpc_errors import to_status


def rpc_error(
    error: errors.ProxyError | None, code: grpc.StatusCode, details: str
) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if error is not None:
        trailing.add("grpc-status-details-bin", to_status(error).SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def proxy_error(error: errors.ProxyError) -> grpc.aio.AioRpcError:
    return rpc_error(error, grpc.StatusCode[error.status], error.message)


def test_policy_denial_names_the_decision_and_reasons() -> None:
    denied = errors.PermissionDenied("policy denied this update", "dec-42", ["needs admin"])
    result = translate(proxy_error(denied), "UpdateImageSetMetadata", "http://x")
    assert isinstance(result, ServiceError)
    assert result.exit_code == 254
    assert str(result) == (
        "An error occurred (PolicyDeniedException) when calling the UpdateImageSetMetadata "
        "operation: "
        "policy denied this update (reason: POLICY_DENIED, decision id: dec-42, "
        "policy reasons: needs admin)"
    )


def test_validation_lists_field_violations() -> None:
    invalid = errors.InvalidArgument(
        [errors.FieldViolation(f"updatable_attributes.f{i}", "bad") for i in range(7)]
    )
    text = str(translate(proxy_error(invalid), "UpdateImageSetMetadata", "http://x"))
    assert text.startswith("An error occurred (InvalidArgument) when calling")
    assert "\n  updatable_attributes.f6: bad" in text
    assert "\n  updatable_attributes.f0: bad" not in text  # already in the message


def test_backend_rejections_use_the_aws_error_code() -> None:
    rejected = errors.BackendRejected(
        "HealthImaging ValidationException: nope", "ValidationException"
    )
    result = translate(proxy_error(rejected), "UpdateImageSetMetadata", "http://x")
    assert isinstance(result, ServiceError)
    assert result.code == "ValidationException"


def test_throttling_says_when_to_retry_and_is_retried_before_the_submit() -> None:
    throttled = proxy_error(errors.ResourceExhausted("Rate exceeded", 4.0))
    assert "retry after 4s" in str(translate(throttled, "UpdateImageSetMetadata", "http://x"))
    plan = retry_plan(throttled, acknowledged=False, failures=0)
    assert plan is not None and plan.resubmit and plan.delay == 4.0
    assert retry_plan(throttled, acknowledged=True, failures=0) is None


@pytest.mark.parametrize(
    "error",
    [
        errors.Aborted("stale version"),
        errors.NotFound("no such image set"),
        errors.Unauthenticated("no identity"),
        errors.Unavailable("HealthImaging unreachable"),
    ],
)
def test_every_answer_of_the_proxy_is_a_service_error(error: errors.ProxyError) -> None:
    assert translate(proxy_error(error), "WatchUpdate", "http://x").exit_code == 254


def test_a_transport_failure_is_not_a_service_error_and_is_retried_by_re_attaching() -> None:
    lost = rpc_error(None, grpc.StatusCode.UNAVAILABLE, "Connection reset")
    result = translate(lost, "UpdateImageSetMetadata", "http://127.0.0.1:1")
    assert isinstance(result, EndpointError)
    assert result.exit_code == 255
    assert str(result) == 'Could not connect to the endpoint URL: "http://127.0.0.1:1"'
    plan = retry_plan(lost, acknowledged=True, failures=0)
    assert plan is not None and not plan.resubmit


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return exited.value.code, out, err


UPDATE = [
    "update-image-set-metadata",
    "--datastore-id",
    "d" * 32,
    "--image-set-id",
    "i" * 32,
    "--latest-version-id",
    "1",
    "--update-image-set-metadata-updates",
    "revertToVersionId=1",
]


def test_unknown_option_is_252(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([*UPDATE, "--bogus"], capsys)
    assert code == 252
    assert "Unknown options: --bogus" in err


def test_missing_required_option_is_252(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(UPDATE[:3], capsys)
    assert code == 252
    assert "the following arguments are required: --image-set-id, --latest-version-id" in err


def test_bad_choice_is_252(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run([*UPDATE, "--cli-binary-format", "hex"], capsys)
    assert code == 252


def test_unreadable_ca_bundle_is_253(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run([*UPDATE, "--ca-bundle", str(tmp_path / "missing.pem")], capsys)
    assert code == 253
    assert "Unable to read the CA bundle" in err


def test_bad_endpoint_variable_is_253(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGING_PROXY_ENDPOINT", "ftp://proxy")
    code, _, err = run(UPDATE, capsys)
    assert code == 253
    assert "IMAGING_PROXY_ENDPOINT" in err


def test_unreachable_proxy_is_255(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGING_PROXY_MAX_ATTEMPTS", "1")
    code, out, err = run([*UPDATE, "--endpoint-url", "http://127.0.0.1:1"], capsys)
    assert (code, out) == (255, "")
    assert 'Could not connect to the endpoint URL: "http://127.0.0.1:1"' in err


def test_skeletons_need_no_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["watch-update", "--generate-cli-skeleton"], capsys)
    assert (code, out) == (0, '{\n    "operationId": ""\n}\n')
    code, out, _ = run(
        [*UPDATE, "--generate-cli-skeleton", "output", "--query", "imageSetState"], capsys
    )
    assert (code, out) == (0, '"imageSetState"\n')


def test_aws_only_options_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    aws_only = ["--profile", "p", "--region", "eu-west-1", "--no-sign-request", "--no-paginate"]
    code, out, _ = run([*UPDATE, *aws_only, "--generate-cli-skeleton", "output"], capsys)
    assert code == 0 and '"latestVersionId": "latestVersionId"' in out


AWS_CODES = [
    "ConflictException",
    "ResourceNotFoundException",
    "ValidationException",
    "AccessDeniedException",
    "ThrottlingException",
    "ServiceQuotaExceededException",
    "InternalServerException",
]


@pytest.mark.parametrize("aws_code", AWS_CODES)
def test_healthimaging_errors_print_as_the_aws_cli_prints_them(aws_code: str) -> None:
    response = {"Error": {"Code": aws_code, "Message": "what HealthImaging said"}}
    client_error = botocore.exceptions.ClientError(response, "UpdateImageSetMetadata")  # type: ignore[arg-type]
    result = translate(
        proxy_error(_from_client_error(client_error)), "UpdateImageSetMetadata", "http://x"
    )
    assert isinstance(result, ServiceError)
    assert result.exit_code == 254
    assert str(result).startswith(
        f"An error occurred ({aws_code}) when calling the UpdateImageSetMetadata operation: "
        "what HealthImaging said"
    )


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (errors.PermissionDenied("policy denied this update", "dec-1"), "PolicyDeniedException"),
        (errors.invalid("latest_version_id", "must be digits"), "InvalidArgument"),
        (errors.Unauthenticated("no identity"), "Unauthenticated"),
        (errors.NotFound("no such operation"), "NotFound"),
        (errors.NoCredentials("no AWS credentials"), "Unavailable"),
    ],
)
def test_the_proxys_own_errors_keep_names_of_their_own(error: errors.ProxyError, name: str) -> None:
    result = translate(proxy_error(error), "UpdateImageSetMetadata", "http://x")
    assert isinstance(result, ServiceError)
    assert (result.code, result.exit_code) == (name, 254)
