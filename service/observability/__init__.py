"""What operators see: Prometheus `metrics`, OpenTelemetry `tracing` (off by default), the PHI-free
`audit` trail (JSON, or FHIR AuditEvent through `audit_fhir`) and JSON-only `logs`.
"""
