package imaging.approvals_test

import data.imaging.update

demo_datastore := "12345678901234567890123456789012"

patient_id := {
	"action": "update", "level": "patient", "tag": "00100020", "keyword": "PatientID",
	"vr": "LO", "vm": "1", "private": false, "retired": false, "profile": "Z",
	"requires_force": false, "categories": [], "within": "", "count": 1,
}

patient_name := object.union(patient_id, {"tag": "00100010", "keyword": "PatientName", "vr": "PN"})

why(justification_length, break_glass) := {
	"purpose_of_use": "PATADMIN", "justification_length": justification_length,
	"ticket": "HIM-1", "break_glass": break_glass,
}

doc(principal, changes, purpose) := {
	"caller": {"principal": principal, "auth_method": "dev", "roles": [], "claims": {}},
	"request": {
		"datastore_id": demo_datastore, "image_set_id": "abcdefabcdefabcdefabcdefabcdef01",
		"latest_version_id": "1", "force": false, "include_study_image_sets": false,
		"kind": "dicom_updates", "revert_to_version_id": "",
	},
	"standard": {"ps3_15_edition": "2026c"},
	"changes": changes,
	"summary": {"change_count": count(changes)},
	"purpose": purpose,
}

asked := {
	"approvers": {"roles": ["patient-identity-approver"], "principals": []},
	"count": 1, "ttl_seconds": 86400,
}

test_patient_id_by_demo_patient_waits_for_approval if {
	d := update.decision with input as doc("dev:demo-patient", [patient_id], why(20, false))
	d == {"allow": false, "reasons": {"patient identifier change needs approval"}, "approval": asked}
}

test_patient_name_by_demo_patient_goes_at_once_without_justification if {
	d := update.decision with input as object.remove(doc("dev:demo-patient", [patient_name], {}), ["purpose"])
	d == {"allow": true, "reasons": set()}
}

test_patient_id_needs_a_justification_but_not_from_an_admin if {
	d := update.decision with input as doc("dev:demo-patient", [patient_id], why(0, false))
	d == {"allow": false, "reasons": {"patient identifier changes require a justification"}}
	a := update.decision with input as object.remove(doc("dev:demo-admin", [patient_id], {}), ["purpose"])
	a == {"allow": true, "reasons": set()}
}

test_approved_update_is_allowed if {
	approved := object.union(doc("dev:demo-patient", [patient_id], why(20, false)), {"approval": {"approved_by": ["dev:demo-admin"]}})
	update.decision == {"allow": true, "reasons": set()} with input as approved
}

test_the_requester_does_not_count_as_an_approver if {
	self := object.union(doc("dev:demo-patient", [patient_id], why(20, false)), {"approval": {"approved_by": ["dev:demo-patient"]}})
	not update.decision.allow with input as self
}

test_several_rules_take_every_approver_the_largest_count_and_shortest_ttl if {
	rules := [
		{"name": "a", "tags": ["00100020"], "exempt_roles": [], "approvers": {"roles": ["r1"], "principals": []}, "count": 1, "ttl_seconds": 100},
		{"name": "b", "tags": ["00100020"], "exempt_roles": [], "approvers": {"roles": [], "principals": ["dev:p"]}, "count": 2, "ttl_seconds": 50},
	]
	d := update.decision with input as doc("dev:demo-patient", [patient_id], why(20, false))
		with data.imaging.approvals.rules as rules
	d.approval == {"approvers": {"roles": ["r1"], "principals": ["dev:p"]}, "count": 2, "ttl_seconds": 50}
	d.reasons == {"a needs approval", "b needs approval"}
}

test_break_glass_goes_ahead_for_its_role if {
	d := update.decision with input as doc("dev:demo-clinician", [patient_id], why(30, true))
	d == {"allow": true, "reasons": set(), "break_glass": true}
}

test_break_glass_without_the_role_is_denied if {
	d := update.decision with input as doc("dev:demo-patient", [patient_id], why(30, true))
	d == {"allow": false, "reasons": {"break_glass requires a break-glass role"}}
}

test_break_glass_when_no_approval_is_needed_is_a_plain_allow if {
	d := update.decision with input as doc("dev:demo-clinician", [patient_name], why(30, true))
	d == {"allow": true, "reasons": set()}
}

test_a_denied_update_is_not_offered_approval if {
	d := update.decision with input as doc("dev:demo-editor", [patient_id], why(30, false))
	d.allow == false
	not d.approval
}
