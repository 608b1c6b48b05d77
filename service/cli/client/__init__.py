"""The AWS-CLI-compatible client room: verbs on a connection engine that needs only the stubs.

`verbs` (argparse, running a verb) · `connection` (the engine: idempotent resends, re-attach,
deadlines, rich errors) · `config` (endpoint, TLS, identity from options and environment) ·
`params`, `shorthand`, `shapes` (reading and validating parameters) · `output`, `table`,
`progress` (printing) · `help` · `errors` (return codes). Nothing here imports the server's
modules, only `service._proto`.
"""
