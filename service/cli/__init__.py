"""The `imaging-proxy` command.

gRPC core logs to stderr by itself, in its own format (handshake failures, bind errors): off
unless the environment sets GRPC_VERBOSITY (e.g. `GRPC_VERBOSITY=debug`). gRPC reads the variable
when it loads, so it is set here, before any verb imports grpc; the proxy's own logs stay JSON
(service/observability/logs.py) and the client verbs' screens free of raw core lines.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
