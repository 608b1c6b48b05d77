# METADATA
# title: Decision-log mask
# description: |
#   OPA applies data.system.log.mask to every decision-log event before it is written, so the
#   console log holds no JWT claims, no attribute values and no long change lists.
#   input here is the event: input.input is the decision's input. See docs/POLICIES.md.
package system.log

# The longest change list logged as it is; longer ones become a summary.
max_logged_changes := 16

# Claims are whatever the token issuer put there (names, e-mail addresses): never logged.
mask contains "/input/caller/claims"

mask contains {"op": "upsert", "path": "/input/changes", "value": changes_summary} if {
	summarised
}

summarised if count(input.input.changes) > max_logged_changes

# With send_values on, changes carry patient data: never logged, however few.
summarised if {
	some change in input.input.changes
	"values" in object.keys(change)
}

changes_summary := {
	"masked": true,
	"entries": count(input.input.changes),
	"changes": sum([n | some change in input.input.changes; n := change.count; is_number(n)]),
}
