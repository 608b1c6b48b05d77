"""Transport: server reflection that also resolves a method's or a field's symbol."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_grpc

SERVICE_NAME: str = reflection.SERVICE_NAME


def member_owner(pool: descriptor_pool.DescriptorPool, symbol: str) -> str | None:
    """The service or message that declares `symbol` (`Service.Method`, `Message.field`), if any.

    Protobuf's Python pool (upb) finds the file of a type but not of a method, so
    grpcio-reflection answers NOT_FOUND for `Service.Method` (grpc/grpc#34743), which grpcurl's
    `describe` and ghz (bojand/ghz#419) ask for. The owner's file is the method's file.
    """
    owner, _, member = symbol.rpartition(".")
    with contextlib.suppress(KeyError):  # the pool does not hold `owner`
        if member in pool.FindServiceByName(owner).methods_by_name:
            return owner
    with contextlib.suppress(KeyError):  # the pool does not hold `owner`
        message = pool.FindMessageTypeByName(owner)
        if member in message.fields_by_name or member in message.oneofs_by_name:
            return owner
    return None


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, answering a member's symbol with its owner's file."""

    def __init__(
        self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._members_pool = pool or descriptor_pool.Default()

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        # The hook grpcio-reflection's servicer calls for this request (its _base.py).
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            owner = member_owner(self._members_pool, fully_qualified_name)
            if owner is not None:
                return super()._file_containing_symbol(request, owner)
        return response


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for `service_names` (and itself) on `server`."""
    servicer = ReflectionServicer((*service_names, SERVICE_NAME))
    reflection_grpc.add_ServerReflectionServicer_to_server(servicer, server)
