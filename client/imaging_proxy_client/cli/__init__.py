"""The `imaging-proxy` command's client verbs, AWS-CLI-compatible, on the client library.

`main` (the command; the server's verbs join it through the `imaging_proxy.verbs` entry points)
· `verbs` (argparse, running a verb) · `connection` (the CLI's side of the engine: observers,
AWS-CLI wording of failures) · `config` (endpoint, TLS, identity from options and environment)
· `parameters/` (reading and validating parameters) · `printing/` (output formats, the
progress line) · `steering`, `approvals` (the operators' verbs) · `help` · `errors` (return
codes). Imports the client library and its
stubs, never the server.

gRPC core logs to stderr by itself, in its own format: off unless the environment sets
GRPC_VERBOSITY (e.g. `GRPC_VERBOSITY=debug`). gRPC reads the variable when it loads, so it is set
here, before any verb imports grpc.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
