"""HealthImaging: `healthimaging` (aioboto3, the only AWS client; AWS errors → domain errors),
`hot_calls` (the two hot calls through botocore's own parts without its per-call machinery) and
`references` (the reads before the queue: stale versions, series and instances the image set
does not hold).
"""
