# METADATA
# title: Default rules for UpdateImageSetMetadata (an allow-list)
# description: |
#   The proxy POSTs {"input": ...} to /v1/data/imaging/update/decision and reads
#   {"allow": bool, "reasons": [string]}. Every failing rule adds one stable reason string;
#   the update is allowed only when none fails. The proxy sends facts (VR, level, PS3.15
#   profile action...), never verdicts; data.imaging.editable names the descriptive
#   attributes a metadata-editor may change although the profile lists them. See docs/POLICIES.md.
package imaging.update

import data.imaging.caller

# METADATA
# entrypoint: true
# description: Always defined; reasons is empty when the update is allowed.
default decision := {"allow": false, "reasons": ["policy input is malformed"]}

decision := {"allow": allow, "reasons": reasons} if well_formed

well_formed if {
	is_object(input.caller)
	is_object(input.request)
}

default allow := false

allow if count(reasons) == 0

# --- the caller ---

reasons contains "caller is not authenticated" if not authenticated

authenticated if {
	is_string(input.caller.principal)
	input.caller.principal != ""
}

reasons contains "caller holds no role on this datastore" if count(caller.roles) == 0

# --- the request as a whole ---

# A helper rather than `not input.request.kind in {...}`, which is undefined (not true) when kind is missing.
reasons contains "request kind is not recognised" if not known_kind

known_kind if input.request.kind in {"dicom_updates", "revert"}

reasons contains "dicom update lists no changes" if {
	input.request.kind == "dicom_updates"
	not has_changes
}

has_changes if count(input.changes) > 0

reasons contains "force requires role metadata-admin" if {
	input.request.force == true
	not admin
}

reasons contains "include_study_image_sets requires role metadata-admin" if {
	input.request.include_study_image_sets == true
	not admin
}

reasons contains "revert requires role metadata-admin" if {
	input.request.kind == "revert"
	not admin
}

admin if "metadata-admin" in caller.roles

# --- each change ---
# Role first, so a caller holding the role never scans the changes. Each scan is one complete
# rule (stops at the first match) or one set of change indexes, with no function calls: linear in
# the entries, and the proxy sends one entry per distinct attribute shape (with a count).

reasons contains "change is not recognised" if count(recognised) != count(input.changes)

# Indexes of the changes with the shape the proxy sends: every fact a rule reads is present.
recognised contains i if {
	some i, change in input.changes
	levels_of_action[change.action][change.level]
	is_string(change.tag)
	is_string(change.vr)
	is_string(change.profile)
	is_string(change.within)
	is_boolean(change.private)
	is_array(change.categories)
	is_number(change.count)
	change.count >= 1
}

levels_of_action := {
	"update": {"patient", "study", "series", "instance"},
	"remove": {"patient", "study", "series", "instance"},
	"remove_series": {"series"},
	"remove_instance": {"instance"},
}

# Every attribute of VR UI, at any level or nesting, plus the identifiers HealthImaging gates
# behind force (category "uid": StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, StudyID).
reasons contains "UID changes require role metadata-admin" if {
	not admin
	touches_uid
}

touches_uid if {
	some change in input.changes
	change.vr == "UI"
}

touches_uid if {
	some change in input.changes
	"uid" in change.categories
}

reasons contains "removing series or instances requires role metadata-admin" if {
	not admin
	removes_series_or_instances
}

removes_series_or_instances if {
	some change in input.changes
	change.action in {"remove_series", "remove_instance"}
}

reasons contains "private tag changes require role private-tag-editor" if {
	not "private-tag-editor" in caller.roles
	touches_private
}

touches_private if {
	some change in input.changes
	change.private == true
}

touches_private if {
	some change in input.changes
	"private" in change.categories
}

reasons contains "patient identity changes require role patient-identity-editor" if {
	not "patient-identity-editor" in caller.roles
	count(identity_changes) > 0
}

# Every patient-level attribute: the Patient bucket describes the person.
identity_changes contains i if {
	some i, change in input.changes
	change.level == "patient"
}

# Every attribute the Confidentiality Profile (PS3.15 Table E.1-1) lists, at whatever level or
# nesting it is written, unless data.json names it an editable descriptive attribute.
identity_changes contains i if {
	some i, change in input.changes
	change.profile != ""
	not data.imaging.editable[change.tag]
}

# The allow-list of metadata-editor: attribute updates and removals that are not identity
# changes, i.e. attributes the profile does not list, plus data.imaging.editable.
reasons contains "metadata changes require role metadata-editor" if {
	not "metadata-editor" in caller.roles
	touches_metadata
}

touches_metadata if count(attribute_changes - identity_changes) > 0

attribute_changes contains i if {
	some i, change in input.changes
	change.action in {"update", "remove"}
}
