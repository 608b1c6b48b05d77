"""imaging-proxy, the server: one folder per stage, in the order a request meets them.

transport (gRPC in and out) → identity (who calls) → normaliser (the update, classified; pure) →
policy (OPA decides) → admission (fair turns, the write budget) → backend (HealthImaging) →
operations (an operation's life, its streams, approvals) → journal (durable records), with
observability beside them and core (value types, errors, settings; pure) beneath. `app` composes
them, `cli` starts them. Layers and purity are contracts in pyproject.toml's [tool.importlinter].
"""
