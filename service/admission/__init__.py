"""Admission and budget: one fair scheduler (`fairness`, pure: a queue per caller served
round-robin) behind every shared stage (`stages`: decisions, reference reads, polls), the
`write_queue` in front of HealthImaging's write quota, and the quota `budget` itself (GCRA
`buckets` in process, or `budget_redis` shared by replicas).
"""
