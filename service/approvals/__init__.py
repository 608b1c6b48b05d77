"""Four eyes: `verdicts` (ApproveUpdate, RejectUpdate, ReviewUpdate as journal transitions) and
`awaiting` (an operation waiting for approval, holding no queue place, until approved, rejected
or expired).
"""
