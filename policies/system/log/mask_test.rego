package system.log_test

import data.system.log

change(i) := {
	"action": "update", "level": "instance", "tag": sprintf("0019%04d", [i]), "keyword": "",
	"vr": "LO", "vm": "", "private": true, "retired": false, "profile": "",
	"requires_force": true, "categories": ["private"], "within": "", "count": 2,
}

# A decision-log event as OPA hands it to the mask policy: the decision's input under input.input.
event(changes) := {
	"decision_id": "d-1",
	"path": "imaging/update/decision",
	"input": {
		"caller": {"principal": "jwt:https://idp.example#svc", "auth_method": "jwt", "roles": [], "claims": {"email": "someone@hospital.example"}},
		"request": {"kind": "dicom_updates"},
		"changes": changes,
		"summary": {"change_count": count(changes)},
	},
	"result": {"allow": false, "reasons": []},
}

few := [change(i) | some i in numbers.range(1, log.max_logged_changes)]

many := [change(i) | some i in numbers.range(1, log.max_logged_changes + 1)]

test_claims_are_erased if {
	"/input/caller/claims" in log.mask with input as event(few)
}

test_short_change_lists_are_logged_as_they_are if {
	masks := log.mask with input as event(few)
	masks == {"/input/caller/claims"}
}

test_long_change_lists_become_a_summary if {
	masks := log.mask with input as event(many)
	summary := {"masked": true, "entries": count(many), "changes": 2 * count(many)}
	masks == {"/input/caller/claims", {"op": "upsert", "path": "/input/changes", "value": summary}}
}

test_changes_with_values_are_never_logged if {
	valued := [object.union(change(1), {"values": [{"series_uid": "", "instance_uid": "1.2", "value": "DOE^JANE"}]})]
	masks := log.mask with input as event(valued)
	{"op": "upsert", "path": "/input/changes", "value": {"masked": true, "entries": 1, "changes": 2}} in masks
}

test_role_lookups_lose_only_their_claims if {
	lookup := {"input": {"caller": {"principal": "x", "claims": {"sub": "x"}}, "request": {"datastore_id": "d"}}}
	masks := log.mask with input as lookup
	masks == {"/input/caller/claims"}
}
