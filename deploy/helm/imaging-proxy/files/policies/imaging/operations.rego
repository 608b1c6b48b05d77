# METADATA
# title: Who may see and steer operations (and policy inputs) that are not their own
# description: |
#   The proxy POSTs {"input": ...} to /v1/data/imaging/operations/decision and reads
#   {"allow": bool, "reasons": [string]}. input.action is one of "watch", "get", "cancel"
#   (input.operation: the operation's principal, datastore_id, image_set_id and state), "list"
#   (input.filter: principal, datastore_id, image_set_id and state, "" = any) or "see_input"
#   (EvaluateUpdate's policy input), "approve" or "reject" (input.operation also holds the
#   approval asked: roles, principals, count, approved_by), "review" (a break-glass update).
#   input.request.datastore_id is the data store concerned ("" when a list names none: then
#   only roles valid in every data store count). The owner of an operation always may watch,
#   get or cancel it (the proxy asks only about others'); the owner never approves, rejects or
#   reviews it (the proxy refuses that itself, and so does this policy). See docs/POLICIES.md.
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

known_actions := {"watch", "get", "cancel", "list", "see_input", "approve", "reject", "review"}

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

# --- approvals: whom the approval names, never the requester ---

reasons contains sprintf("a requester may not %s their own update", [input.action]) if {
	input.action in {"approve", "reject", "review"}
	input.operation.principal == input.caller.principal
}

reasons contains sprintf("%s requires one of the approvers the policy named", [input.action]) if {
	input.action in {"approve", "reject"}
	not named_approver
}

named_approver if input.caller.principal in input.operation.approval.principals

named_approver if {
	some role in input.operation.approval.roles
	role in caller.roles
}

reasons contains "review requires role break-glass-reviewer" if {
	input.action == "review"
	not "break-glass-reviewer" in caller.roles
}

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
