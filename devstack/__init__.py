"""Local stack: OPA, the emulator, proxies and Redis as child processes, seeded with fresh image
sets; one builder shared by `imaging-proxy demo`, the tests and the benchmarks.

Rooms: `processes` (children, readiness, shutdown), `servers` (the four servers), `proxies`,
`stack` (the builder), `seeds` (DICOM with fresh UIDs), `settings` (TOML, quotas), `admin` (the
emulator's faults and request log), `examples` (the AWS page's image sets), `pki` (TLS and JWT
material), `polling` (`eventually`).
"""
