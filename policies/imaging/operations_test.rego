package imaging.operations_test

import data.imaging.operations

demo_datastore := "12345678901234567890123456789012"

other_datastore := "abcdefabcdefabcdefabcdefabcdef01"

caller(principal) := {"principal": principal, "auth_method": "dev", "roles": [], "claims": {}}

on_operation(action, who, owner, datastore_id) := {
	"action": action,
	"caller": caller(who),
	"request": {"datastore_id": datastore_id},
	"operation": {"principal": owner, "datastore_id": datastore_id, "image_set_id": "x", "state": "queued"},
}

listing(who, principal, datastore_id) := {
	"action": "list",
	"caller": caller(who),
	"request": {"datastore_id": datastore_id},
	"filter": {"principal": principal, "datastore_id": datastore_id, "image_set_id": "", "state": ""},
}

test_owner_may_steer_its_own if {
	every action in ["watch", "get", "cancel"] {
		operations.decision == {"allow": true, "reasons": set()} with input as on_operation(action, "dev:demo-viewer", "dev:demo-viewer", demo_datastore)
	}
}

test_owner_may_list_its_own if {
	operations.decision.allow with input as listing("dev:demo-viewer", "dev:demo-viewer", "")
}

test_admin_may_steer_others_on_its_datastore if {
	every action in ["watch", "get", "cancel"] {
		operations.decision.allow with input as on_operation(action, "dev:demo-admin", "dev:demo-editor", demo_datastore)
	}
}

test_admin_elsewhere_may_not if {
	decision := operations.decision with input as on_operation("cancel", "dev:demo-admin", "dev:demo-editor", other_datastore)
	decision == {"allow": false, "reasons": {"cancel on another caller's operations requires role metadata-admin"}}
}

test_editor_may_not_cancel_others if {
	not operations.decision.allow with input as on_operation("cancel", "dev:demo-editor", "dev:demo-admin", demo_datastore)
}

test_admin_may_list_everyone_on_its_datastore if {
	operations.decision.allow with input as listing("dev:demo-admin", "", demo_datastore)
}

test_listing_every_datastore_needs_a_grant_valid_everywhere if {
	not operations.decision.allow with input as listing("dev:demo-admin", "", "")
	operations.decision.allow with input as listing("spiffe://hospital.example/ns/imaging/sa/admin", "", "")
}

test_editor_may_not_list_others if {
	not operations.decision.allow with input as listing("dev:demo-editor", "dev:demo-admin", demo_datastore)
}

test_unauthenticated_owner_is_no_owner if {
	not operations.decision.allow with input as on_operation("get", "", "", demo_datastore)
	not operations.decision.allow with input as listing("", "", demo_datastore)
}

see_input(who) := {"action": "see_input", "caller": caller(who), "request": {"datastore_id": demo_datastore}}

test_policy_input_for_admins_and_policy_authors if {
	operations.decision.allow with input as see_input("dev:demo-admin")
	operations.decision.allow with input as see_input("dev:demo-author")
	decision := operations.decision with input as see_input("dev:demo-editor")
	decision.reasons == {"seeing the policy input requires role policy-author or metadata-admin"}
}

test_unknown_action_is_refused if {
	decision := operations.decision with input as object.union(see_input("dev:demo-admin"), {"action": "delete"})
	decision == {"allow": false, "reasons": {"action is not recognised"}}
}

test_malformed_input_is_refused if {
	operations.decision == {"allow": false, "reasons": ["policy input is malformed"]} with input as {"caller": "x"}
}

awaiting(action, who, owner) := object.union(on_operation(action, who, owner, demo_datastore), {"operation": {
	"principal": owner, "datastore_id": demo_datastore, "image_set_id": "x", "state": "awaiting_approval",
	"approval": {"roles": ["patient-identity-approver"], "principals": ["dev:named"], "count": 1, "approved_by": []},
}})

test_an_approver_role_may_approve_and_reject if {
	every action in ["approve", "reject"] {
		operations.decision == {"allow": true, "reasons": set()} with input as awaiting(action, "dev:demo-admin", "dev:demo-patient")
	}
}

test_a_named_principal_may_approve if {
	operations.decision.allow with input as awaiting("approve", "dev:named", "dev:demo-patient")
}

test_others_may_not_approve if {
	d := operations.decision with input as awaiting("approve", "dev:demo-editor", "dev:demo-patient")
	d == {"allow": false, "reasons": {"approve requires one of the approvers the policy named"}}
}

test_the_requester_may_never_approve if {
	d := operations.decision with input as awaiting("approve", "dev:demo-admin", "dev:demo-admin")
	"a requester may not approve their own update" in d.reasons
}

test_a_reviewer_may_review_others_break_glass if {
	operations.decision.allow with input as on_operation("review", "dev:demo-admin", "dev:demo-clinician", demo_datastore)
	d := operations.decision with input as on_operation("review", "dev:demo-editor", "dev:demo-clinician", demo_datastore)
	d == {"allow": false, "reasons": {"review requires role break-glass-reviewer"}}
	own := operations.decision with input as on_operation("review", "dev:demo-admin", "dev:demo-admin", demo_datastore)
	"a requester may not review their own update" in own.reasons
}
