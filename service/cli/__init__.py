"""The `imaging-proxy` command. Loaded before any of its verbs imports grpc, so gRPC core's own
stderr lines are off from the start (service/logs.py)."""

from service.logs import quiet_grpc_core

quiet_grpc_core()
