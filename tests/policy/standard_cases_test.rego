# Per-attribute decisions driven by the standard's facts: every case in standard_cases.json is an
# OPA input built by the real normaliser (tests/policy/generate_cases.py) with the decision the
# allow-list promises for it. Not part of the policy bundle: `opa test policies/ tests/policy/`.
package imaging.standard_cases_test

import data.imaging.update

cases := data.standard_cases

decided_as_promised contains name if {
	some name, case in cases
	decision := update.decision with input as case.input
	decision == {"allow": case.allow, "reasons": {reason | some reason in case.reasons}}
}

test_every_case_decides_as_its_facts_say if {
	count(cases) >= 100
	print("cases decided otherwise:", object.keys(cases) - decided_as_promised)
	count(decided_as_promised) == count(cases)
}

test_cases_cover_every_profile_action_code if {
	codes := {change.profile | some case in cases; some change in case.input.changes}
	codes == {"", "X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
}

test_cases_cover_ui_at_every_level if {
	levels := {change.level | some case in cases; some change in case.input.changes; change.vr == "UI"}
	levels == {"patient", "study", "series", "instance"}
}

test_cases_include_allowed_and_denied if {
	{case.allow | some case in cases} == {true, false}
}
