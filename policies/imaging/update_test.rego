package imaging.update_test

import data.imaging.update

# --- builders (the input document the proxy sends; see docs/POLICIES.md) ---

demo_datastore := "12345678901234567890123456789012"

other_datastore := "abcdefabcdefabcdefabcdefabcdef01"

# One entry per distinct attribute shape, with the facts the proxy takes from the standard
# (pydicom's dictionary, PS3.15 Table E.1-1 2026c) and how many changes it stands for.
study_change := {
	"action": "update", "level": "study", "tag": "00081030", "keyword": "StudyDescription",
	"vr": "LO", "vm": "1", "private": false, "retired": false, "profile": "X",
	"requires_force": false, "categories": [], "within": "", "count": 1,
}

series_change := object.union(study_change, {
	"level": "series", "tag": "0008103E", "keyword": "SeriesDescription",
})

instance_remove := object.union(study_change, {
	"action": "remove", "level": "instance", "tag": "00204000", "keyword": "ImageComments", "vr": "LT",
})

# Not listed by the Confidentiality Profile: a metadata-editor may change it.
body_part := object.union(study_change, {
	"level": "series", "tag": "00180015", "keyword": "BodyPartExamined", "vr": "CS", "profile": "",
})

patient_name := object.union(study_change, {
	"level": "patient", "tag": "00100010", "keyword": "PatientName", "vr": "PN", "profile": "Z",
})

# Patient level although the profile does not list it (a made-up fact: the level alone decides).
patient_unlisted := object.union(study_change, {
	"level": "patient", "tag": "00102201", "keyword": "PatientSpeciesDescription", "profile": "",
})

study_patient_id := object.union(study_change, {"tag": "00100020", "keyword": "PatientID", "profile": "Z/D"})

religion := object.union(study_change, {
	"level": "instance", "tag": "001021F0", "keyword": "PatientReligiousPreference", "profile": "X",
})

study_uid := object.union(study_change, {
	"tag": "0020000D", "keyword": "StudyInstanceUID", "vr": "UI", "profile": "U",
	"requires_force": true, "categories": ["uid"],
})

# VR UI, not listed by the profile, not force-gated: the VR alone needs the admin.
sop_class := object.union(study_change, {
	"level": "instance", "tag": "00080016", "keyword": "SOPClassUID", "vr": "UI", "profile": "",
})

# A UID inside a sequence item at patient level.
nested_uid := object.union(sop_class, {
	"level": "patient", "tag": "00081155", "keyword": "ReferencedSOPInstanceUID", "profile": "U",
	"requires_force": true, "within": "00081120",
})

private_tag := object.union(study_change, {
	"level": "instance", "tag": "001910F9", "keyword": "", "vr": "DS", "vm": "", "profile": "",
	"private": true, "requires_force": true, "categories": ["private"],
})

remove_series := object.union(study_change, {
	"action": "remove_series", "level": "series", "tag": "", "keyword": "", "vr": "", "vm": "",
	"profile": "", "count": 3000,
})

remove_instance := object.union(remove_series, {"action": "remove_instance", "level": "instance", "count": 1})

request(overrides) := object.union(
	{
		"datastore_id": demo_datastore, "image_set_id": other_datastore, "latest_version_id": "1",
		"force": false, "include_study_image_sets": false, "kind": "dicom_updates",
		"revert_to_version_id": "",
	},
	overrides,
)

# The summary is informative only: the policy judges the changes themselves.
doc(principal, jwt_roles, req, changes) := {
	"caller": {"principal": principal, "auth_method": "dev", "roles": jwt_roles, "claims": {}},
	"request": request(req),
	"standard": {"ps3_15_edition": "2026c"},
	"changes": changes,
	"summary": {"change_count": count(changes)},
}

jwt_decide(principal, jwt_roles, req, changes) := d if {
	d := update.decision with input as doc(principal, jwt_roles, req, changes)
}

decide(principal, req, changes) := jwt_decide(principal, [], req, changes)

allowed(principal, req, changes) if {
	decide(principal, req, changes) == {"allow": true, "reasons": set()}
}

denied(principal, req, changes, reasons) if {
	decide(principal, req, changes) == {"allow": false, "reasons": reasons}
}

# --- grants from data.json ---

test_admin_may_do_everything if {
	allowed(
		"dev:demo-admin",
		{"force": true, "include_study_image_sets": true},
		[study_change, series_change, instance_remove, patient_name, study_uid, private_tag, remove_series, remove_instance],
	)
	allowed("dev:demo-admin", {"kind": "revert", "revert_to_version_id": "1"}, [])
}

test_editor_may_edit_study_series_instance if {
	allowed("dev:demo-editor", {}, [study_change, series_change, instance_remove])
}

test_viewer_is_denied if {
	denied("dev:demo-viewer", {}, [study_change], {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	})
}

test_unknown_principal_is_denied if {
	denied("someone-else", {}, [study_change], {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	})
}

test_demo_grants_do_not_reach_other_datastores if {
	denied("dev:demo-admin", {"datastore_id": other_datastore}, [study_change], {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	})
}

test_spiffe_grants_hold_in_every_datastore if {
	admin := "spiffe://hospital.example/ns/imaging/sa/admin"
	editor := "spiffe://hospital.example/ns/imaging/sa/editor"
	allowed(admin, {"datastore_id": other_datastore, "force": true}, [study_uid, patient_name, private_tag])
	allowed(editor, {"datastore_id": other_datastore}, [study_change])
	allowed(editor, {}, [series_change])
	denied(editor, {}, [patient_name], {"patient identity changes require role patient-identity-editor"})
}

test_spiffe_viewer_is_denied if {
	denied("spiffe://hospital.example/ns/imaging/sa/viewer", {}, [study_change], {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	})
}

test_added_grant_takes_effect if {
	grants := {"*": {}, other_datastore: {"new-service": ["metadata-editor"]}}
	d := update.decision with input as doc("new-service", [], {"datastore_id": other_datastore}, [study_change])
		with data.imaging.grants as grants
	d == {"allow": true, "reasons": set()}
}

test_unknown_role_names_in_grants_are_ignored if {
	grants := {"*": {"svc-a": ["superuser"]}, demo_datastore: {"svc-a": ["metadata-editor "]}}
	d := update.decision with input as doc("svc-a", [], {}, [study_change])
		with data.imaging.grants as grants
	d == {"allow": false, "reasons": {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	}}
}

test_admin_role_alone_suffices_for_structural_changes if {
	grants := {demo_datastore: {"janitor": ["metadata-admin"]}}
	d1 := update.decision with input as doc("janitor", [], {}, [remove_series, remove_instance])
		with data.imaging.grants as grants
	d1 == {"allow": true, "reasons": set()}
	d2 := update.decision with input as doc("janitor", [], {"kind": "revert", "revert_to_version_id": "1"}, [])
		with data.imaging.grants as grants
	d2 == {"allow": true, "reasons": set()}
}

# --- authentication ---

test_empty_principal_is_denied if {
	denied("", {}, [study_change], {
		"caller is not authenticated",
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	})
}

test_non_string_principal_is_denied if {
	d := update.decision with input as doc(42, ["metadata-editor"], {}, [study_change])
	d == {"allow": false, "reasons": {"caller is not authenticated"}}
}

test_malformed_input_is_denied if {
	malformed := {"allow": false, "reasons": ["policy input is malformed"]}
	d1 := update.decision with input as {}
	d1 == malformed
	d2 := update.decision with input as object.remove(doc("dev:demo-admin", [], {}, [study_change]), ["request"])
	d2 == malformed
	d3 := update.decision with input as object.union(doc("dev:demo-admin", [], {}, [study_change]), {"caller": "dev:demo-admin"})
	d3 == malformed
}

test_missing_request_fields_are_denied if {
	d := update.decision with input as {"caller": {"principal": "dev:demo-admin"}, "request": {}}
	d == {"allow": false, "reasons": {
		"caller holds no role on this datastore",
		"request kind is not recognised",
	}}
}

# --- request-level rules ---

test_force_requires_admin if {
	denied("dev:demo-editor", {"force": true}, [study_change], {"force requires role metadata-admin"})
}

test_include_study_requires_admin if {
	denied("dev:demo-editor", {"include_study_image_sets": true}, [study_change], {
		"include_study_image_sets requires role metadata-admin",
	})
}

test_revert_requires_admin if {
	denied("dev:demo-editor", {"kind": "revert", "revert_to_version_id": "1"}, [], {"revert requires role metadata-admin"})
}

test_unknown_kind_is_denied if {
	denied("dev:demo-admin", {"kind": "something"}, [study_change], {"request kind is not recognised"})
}

test_update_without_changes_is_denied if {
	denied("dev:demo-admin", {}, [], {"dicom update lists no changes"})
	d := update.decision with input as object.remove(doc("dev:demo-admin", [], {}, []), ["changes"])
	d == {"allow": false, "reasons": {"dicom update lists no changes"}}
}

# --- change-level rules ---

identity_reason := "patient identity changes require role patient-identity-editor"

uid_reason := "UID changes require role metadata-admin"

test_uid_change_requires_admin if {
	denied("dev:demo-editor", {"force": true}, [study_uid], {
		"force requires role metadata-admin",
		uid_reason,
		identity_reason,
	})
	allowed("dev:demo-admin", {"force": true}, [study_uid])

	# StudyID is no UID (VR SH), but HealthImaging gates it behind force like the UIDs.
	study_id := object.union(study_uid, {"tag": "00200010", "keyword": "StudyID", "vr": "SH", "profile": "Z"})
	denied("dev:demo-patient", {"force": true}, [study_id], {"force requires role metadata-admin", uid_reason})
}

test_every_ui_attribute_requires_admin if {
	denied("dev:demo-editor", {}, [sop_class], {uid_reason})
	denied("dev:demo-patient", {}, [object.union(sop_class, {"level": "series"})], {uid_reason})
	denied("dev:demo-patient", {"force": true}, [nested_uid], {uid_reason, "force requires role metadata-admin"})
	allowed("dev:demo-admin", {"force": true}, [sop_class, nested_uid])
}

test_series_and_instance_removal_require_admin if {
	reason := {"removing series or instances requires role metadata-admin"}
	denied("dev:demo-editor", {}, [remove_series], reason)
	denied("dev:demo-editor", {}, [remove_instance], reason)
	allowed("dev:demo-admin", {}, [remove_series, remove_instance])
}

test_private_tags_require_private_tag_editor if {
	reason := {"private tag changes require role private-tag-editor"}
	denied("dev:demo-editor", {}, [private_tag], reason)
	denied("dev:demo-editor", {}, [object.union(private_tag, {"categories": []})], reason)
	denied("dev:demo-editor", {}, [object.union(private_tag, {"private": false})], reason)
	allowed("dev:demo-private", {}, [private_tag, study_change])
}

test_private_tag_editor_alone_cannot_edit_metadata if {
	grants := {"*": {"tag-bot": ["private-tag-editor"]}}
	d := update.decision with input as doc("tag-bot", [], {}, [private_tag])
		with data.imaging.grants as grants
	d == {"allow": false, "reasons": {"metadata changes require role metadata-editor"}}
}

test_profile_listed_attributes_require_patient_identity_editor if {
	denied("dev:demo-editor", {}, [patient_name], {identity_reason})
	denied("dev:demo-editor", {}, [study_patient_id], {identity_reason, "patient identifier changes require a justification"})
	denied("dev:demo-editor", {}, [religion], {identity_reason})
	denied("dev:demo-editor", {}, [object.union(religion, {"level": "series", "action": "remove"})], {identity_reason})
	denied("dev:demo-private", {}, [patient_name], {identity_reason})
	allowed("dev:demo-patient", {}, [patient_name, religion, study_change])
}

test_editor_may_change_attributes_the_profile_does_not_list if {
	allowed("dev:demo-editor", {}, [body_part, object.union(body_part, {"level": "instance", "count": 40})])
}

test_editable_attributes_come_from_data if {
	# StudyDescription is profile-listed (X): only data.imaging.editable lets an editor change it.
	d1 := update.decision with input as doc("dev:demo-editor", [], {}, [study_change])
		with data.imaging.editable as {}
	d1 == {"allow": false, "reasons": {identity_reason}}

	# A hospital adds Occupation (X) to its editable list: no Python change needed.
	occupation := object.union(study_change, {"tag": "00102180", "keyword": "Occupation", "vr": "SH"})
	denied("dev:demo-editor", {}, [occupation], {identity_reason})
	d2 := update.decision with input as doc("dev:demo-editor", [], {}, [occupation])
		with data.imaging.editable as {"00102180": "Occupation"}
	d2 == {"allow": true, "reasons": set()}
}

test_patient_level_attributes_count_as_identity if {
	denied("dev:demo-editor", {}, [patient_unlisted], {identity_reason})
	allowed("dev:demo-patient", {}, [patient_unlisted])
}

test_patient_identity_editor_alone_needs_nothing_else_for_identity_changes if {
	grants := {"*": {"registrar": ["patient-identity-editor"]}}
	d := update.decision with input as doc("registrar", [], {}, [patient_name, patient_unlisted, religion])
		with data.imaging.grants as grants
	d == {"allow": true, "reasons": set()}
}

test_unrecognised_changes_are_denied if {
	reason := {"change is not recognised"}
	denied("dev:demo-admin", {}, [object.union(study_change, {"action": "rename"})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"level": "frame"})], reason)
	denied("dev:demo-admin", {}, [object.union(remove_series, {"level": "instance"})], reason)
	denied("dev:demo-admin", {}, [object.union(remove_instance, {"level": "series"})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"private": "no"})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"categories": "uid"})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"profile": false})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"vr": null})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"tag": 1})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"within": []})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"count": 0})], reason)
	denied("dev:demo-admin", {}, [object.union(study_change, {"count": "1"})], reason)
	every fact in ["action", "level", "tag", "vr", "profile", "within", "private", "categories", "count"] {
		denied("dev:demo-admin", {}, [object.remove(study_change, [fact])], reason)
	}
}

test_every_failing_rule_gives_one_reason if {
	denied(
		"dev:demo-viewer",
		{"force": true, "include_study_image_sets": true},
		[study_change, study_change, study_uid, private_tag, patient_name, remove_series],
		{
			"caller holds no role on this datastore",
			"force requires role metadata-admin",
			"include_study_image_sets requires role metadata-admin",
			uid_reason,
			"removing series or instances requires role metadata-admin",
			"private tag changes require role private-tag-editor",
			identity_reason,
			"metadata changes require role metadata-editor",
		},
	)
}

# --- verified JWT roles ---

test_jwt_roles_hold_in_every_datastore if {
	jwt_decide("svc-a", ["metadata-editor"], {"datastore_id": other_datastore}, [study_change]) == {
		"allow": true, "reasons": set(),
	}
}

test_jwt_roles_add_to_data_grants if {
	jwt_decide("dev:demo-editor", ["private-tag-editor"], {}, [private_tag]) == {"allow": true, "reasons": set()}
}

test_jwt_scoped_roles_hold_in_their_datastore_only if {
	scoped := [sprintf("metadata-editor@%s", [demo_datastore])]
	jwt_decide("svc-a", scoped, {}, [study_change]) == {"allow": true, "reasons": set()}
	jwt_decide("svc-a", scoped, {"datastore_id": other_datastore}, [study_change]) == {"allow": false, "reasons": {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	}}
}

test_jwt_unknown_or_malformed_roles_are_ignored if {
	malformed := [
		"superuser", 7, "metadata-admin@*",
		sprintf("metadata-admin@%s@x", [demo_datastore]),
		sprintf("superuser@%s", [demo_datastore]),
	]
	jwt_decide("svc-a", malformed, {}, [study_change]) == {"allow": false, "reasons": {
		"caller holds no role on this datastore",
		"metadata changes require role metadata-editor",
	}}
}
