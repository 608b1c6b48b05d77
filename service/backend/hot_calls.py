"""Backend stage: a HealthImaging operation sent by botocore's own parts, minus per-call machinery.

botocore spends most of a call on what does not change between calls: parameter validation
(the normaliser validates more strictly), endpoint-ruleset resolution, the signer choice, the
user-agent string and a dozen event emits whose handlers do nothing for this service. A
`LeanOperation` does those once, on its first call, and then per call only serializes
(botocore's serializer), signs (the client's own RequestSigner, which asks the credential
provider every time, so refreshed credentials are used), sends (the client's AIOHTTPSession:
same pool, timeouts and connection errors) and parses (aiobotocore's parser, with the modeled
error fields and the retry handler's response metadata), raising the client's own ClientError.

It refuses (`Unsupported`) a client on which it would not be equivalent: retries on, a handler
it would skip that is not one of botocore's defaults, or an operation with checksums,
compression, streaming or an idempotency token. The check runs once, when the proxy opens its
client: a handler registered on the client afterwards is not seen, and the user agent is the one
of the first call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiobotocore.endpoint import convert_to_response_dict
from botocore.awsrequest import AWSPreparedRequest, create_request_object, prepare_request_dict
from botocore.handlers import add_recursion_detection_header, add_retry_headers
from botocore.serialize import create_serializer

# The handlers botocore registers by default on the events a lean call does not emit. Each is
# either redone here by calling it (signer, user agent, retry headers, recursion detection, the
# retry handler's metadata) or does nothing for these calls (idempotency tokens: none in these
# operations; api_versions: not configured; the retry quota: never spent without retries).
_DEFAULT_HANDLERS: Final[Mapping[str, frozenset[str]]] = {
    "provide-client-params": frozenset(),
    "before-parameter-build": frozenset(
        {"generate_idempotent_uuid", "_handle_request_validation_mode_member"}
    ),
    "before-endpoint-resolution": frozenset(),
    "before-call": frozenset(
        {"add_recursion_detection_header", "inject_api_version_header_if_needed"}
    ),
    "request-created": frozenset(
        {
            "AioRequestSigner.handler",
            "UserAgentString.rebuild_and_replace_user_agent_handler",
            "add_retry_headers",
        }
    ),
    "before-sign": frozenset(),
    "before-send": frozenset(),
    "response-received": frozenset(),
    "before-parse": frozenset(),
    "after-call": frozenset({"RetryQuotaChecker.release_retry_quota"}),
    "after-call-error": frozenset(),
}


class Unsupported(Exception):
    """This client or operation cannot be called leanly without changing what is sent."""


@dataclass(frozen=True)
class _Prepared:
    """What botocore would compute identically on every call, computed once."""

    endpoint_url: str
    headers: Mapping[str, str]
    context: Mapping[str, Any]
    user_agent: str
    sign_with: Mapping[str, Any]


class LeanOperation:
    """One operation of a long-lived aiobotocore client, called without its per-call machinery."""

    def __init__(self, client: Any, operation_name: str) -> None:
        check_supported(client, operation_name)
        self._client = client
        self._name = operation_name
        self._model = client._service_model.operation_model(operation_name)
        protocol = client._service_model.resolved_protocol
        self._serializer = create_serializer(protocol, include_validation=False)
        self._parser = client._endpoint._response_parser_factory.create_parser(protocol)
        self._prepared: _Prepared | None = None

    async def call(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parsed response, or the ClientError (or connection error) the client would raise."""
        request, context = await self.request(params)
        endpoint = self._client._endpoint
        response: tuple[Any, dict[str, Any]] | None = None
        try:
            response = await self._parse(await endpoint.http_session.send(request))
        except Exception as exc:
            await endpoint._needs_retry(1, self._model, {"context": context}, None, exc)
            raise
        await endpoint._needs_retry(1, self._model, {"context": context}, response)
        http, parsed = response
        if "ResponseMetadata" in parsed:
            parsed["ResponseMetadata"]["RetryAttempts"] = 0
        if http.status_code >= 300:
            code = parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, self._name)
        return parsed

    async def request(self, params: Mapping[str, Any]) -> tuple[AWSPreparedRequest, dict[str, Any]]:
        """The signed HTTP request botocore would send for `params`, and its request context."""
        prepared = self._prepared or await self._prepare(params)
        context = {**prepared.context, "retries": {}}
        self._client._endpoint._update_retries_context(context, 1)
        request_dict = self._serializer.serialize_to_request(params, self._model)
        if not self._client.meta.config.inject_host_prefix:
            request_dict.pop("host_prefix", None)
        request_dict["headers"].update(prepared.headers)
        prepare_request_dict(request_dict, prepared.endpoint_url, context, prepared.user_agent)
        add_recursion_detection_header(request_dict)
        request = create_request_object(request_dict)
        signer = self._client._request_signer
        auth = await signer.get_auth_instance(**prepared.sign_with)  # fresh credentials
        auth.add_auth(request)
        add_retry_headers(request)
        return self._client._endpoint.prepare_request(request), context

    async def _parse(self, http: Any) -> tuple[Any, dict[str, Any]]:
        response_dict = await convert_to_response_dict(http, self._model)
        parsed: dict[str, Any] = await self._parser.parse(response_dict, self._model.output_shape)
        if http.status_code >= 300:
            await self._client._endpoint._add_modeled_error_fields(
                response_dict, parsed, self._model, self._parser
            )
        return http, parsed

    async def _prepare(self, params: Mapping[str, Any]) -> _Prepared:
        """Endpoint ruleset, signer choice and user agent, resolved as `_make_api_call` does."""
        client = self._client
        context = _request_context(client, self._model)
        url, headers, properties = await client._resolve_endpoint_ruleset(
            self._model, dict(params), context
        )
        if properties:
            context["endpoint_properties"] = properties
        self._prepared = _Prepared(
            url, dict(headers), context, client._user_agent_creator.to_string(),
            await _signing_arguments(client._request_signer, self._name, context),
        )  # fmt: skip
        return self._prepared


def _request_context(client: Any, model: Any) -> dict[str, Any]:
    """The request context `_make_api_call` starts every call with."""
    return {
        "client_region": client.meta.region_name,
        "client_config": client.meta.config,
        "has_streaming_input": model.has_streaming_input,
        "auth_type": model.resolved_auth_type,
        "unsigned_payload": model.unsigned_payload,
        "auth_options": client._service_model.metadata.get("auth"),
    }


async def _signing_arguments(signer: Any, operation_name: str, context: Any) -> dict[str, Any]:
    """What `RequestSigner.sign` passes to `get_auth_instance` for this operation."""
    signing = context.get("signing", {})
    if signing.get("request_credentials") or signing.get("identity_cache") is not None:
        raise Unsupported("per-request credentials or an identity cache")
    return {
        "signing_name": signing.get("signing_name") or signer._signing_name,
        "region_name": signing.get("region") or signer._region_name,
        "signature_version": await signer._choose_signer(operation_name, "standard", context),
    }


def check_supported(client: Any, operation_name: str) -> None:
    """Raises Unsupported unless a lean call sends what `_make_api_call` would send."""
    retries = client.meta.config.retries or {}
    attempts = retries.get("total_max_attempts")
    if attempts is None and "max_attempts" in retries:
        attempts = retries["max_attempts"] + 1
    if attempts != 1:
        raise Unsupported("retries are on: the lean path sends one attempt")
    model = client._service_model.operation_model(operation_name)
    if (
        model.http_checksum
        or model.request_compression
        or model.has_streaming_input
        or model.has_streaming_output
        or model.has_event_stream_output
        or model.idempotent_members
    ):
        raise Unsupported(f"{operation_name} needs checksums, compression, streams or a token")
    service_id = client._service_model.service_id.hyphenize()
    for event, known in _DEFAULT_HANDLERS.items():
        registered = set(_handler_names(client, f"{event}.{service_id}.{operation_name}"))
        if not registered <= known:
            raise Unsupported(f"extra {event} handlers: {sorted(registered - known)}")


def _handler_names(client: Any, event: str) -> list[str]:
    events = client.meta.events
    handlers = getattr(events, "_emitter", events)._handlers.prefix_search(event)
    return [getattr(handler, "__qualname__", repr(handler)) for handler in handlers]
