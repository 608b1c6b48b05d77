"""An operation's life: `pipeline` (the request path as one function), `runner` (queue, submit,
follow, recover, take over), `operation` (one operation's record and what was observed of it),
`ownership` (the replica's lease), `landed` (did a write whose answer was lost land?),
`image_set_polls` (one GetImageSet loop per image set), `event_streams` and `stream_wakeup` (the
streams that read an operation), `events` (what a stream tells, pure), `steering` (list,
inspect, cancel). Four eyes: `awaiting` (an operation waiting for approval, holding no queue
place, until approved, rejected or expired) and `approvals` (ApproveUpdate, RejectUpdate,
ReviewUpdate as journal transitions).
"""
