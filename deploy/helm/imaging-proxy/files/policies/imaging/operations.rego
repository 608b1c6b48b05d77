# METADATA
# title: Who may see and steer operations (and policy inputs) that are not their own
# description: |
#   The proxy POSTs {"input": ...} to /v1/data/imaging/operations/decision and reads
#   {"allow": bool, "reasons": [string]}. input.action is one of "watch", "get", "cancel"
#   (input.operation: the operation's principal, datastore_id, image_set_id and state), "list"
#   (input.filter: principal, datastore_id, image_set_id and state, "" = any) or "see_input"
#   (EvaluateUpdate's policy input). input.request.datastore_id is the data store concerned
#   ("" when a list names none: then only roles valid in every data store count). The owner of
#   an operation always may; the proxy asks only about others'. See docs/POLICIES.md.
package imaging.operations

import data.imaging.caller

# METADATA
# entrypoint: true
# description: Always defined; reasons is empty when the action is allowed.
default decision := {"allow": false, "reasons": ["policy input is malformed"]}

decision := {"allow": allow, "reasons": reasons} if well_formed

well_formed if {
	is_object(input.caller)
	is_object(input.request)
	is_string(input.action)
}

default allow := false

allow if count(reasons) == 0

reasons contains "action is not recognised" if not input.action in known_actions

known_actions := {"watch", "get", "cancel", "list", "see_input"}

reasons contains sprintf("%s on another caller's operations requires role metadata-admin", [input.action]) if {
	input.action in {"watch", "get", "cancel", "list"}
	not owner
	not admin
}

reasons contains "seeing the policy input requires role policy-author or metadata-admin" if {
	input.action == "see_input"
	not admin
	not "policy-author" in caller.roles
}

admin if "metadata-admin" in caller.roles

owner if {
	input.action in {"watch", "get", "cancel"}
	authenticated
	input.operation.principal == input.caller.principal
}

owner if {
	input.action == "list"
	authenticated
	input.filter.principal == input.caller.principal
}

authenticated if {
	is_string(input.caller.principal)
	input.caller.principal != ""
}
