"""The policy stage: `decision_gate` (callers without a role refused before any work, the others
wait their turn), `decisions` (OPA's decision API over one kept-alive session, read fail-closed),
`policy_input` (the compact input OPA sees) and `opa_admin` (OPA's own API: health, policy
status, push and pull).
"""
