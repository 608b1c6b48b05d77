"""Who is calling: `callers` turns a call's mTLS certificate, JWT or dev header into a `Caller`
with a namespaced principal; `tokens` verifies JWTs, each key bound to its configured issuer.
"""
