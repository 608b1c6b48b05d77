"""Local stack: OPA, the emulator, proxies and Redis as child processes, seeded with fresh image
sets; one builder shared by `imaging-proxy demo`, the tests and the benchmarks. It ships in the
server's wheel for the `demo` verb, outside `service/`: the production code never imports it
(pyproject.toml's [tool.importlinter]).

Rooms: `demo` (the verb), `processes` (children, readiness, shutdown), `servers` (the four
servers), `proxies`, `stack` (the builder), `seeds` (DICOM with fresh UIDs), `settings` (TOML,
quotas), `admin` (the emulator's faults and request log), `examples` (the AWS page's image sets),
`polling` (`eventually`). The tests' TLS and JWT material is tests/support/pki.py.
"""
