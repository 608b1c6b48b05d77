# METADATA
# title: Which allowed updates need a second person's approval, and break-glass
# description: |
#   data.imaging.approvals.rules lists the rules: an update touching one of a rule's tags, by a
#   caller holding none of its exempt_roles, waits for `count` approvals from principals holding
#   one of its approver roles (or named among its principals) for at most ttl_seconds. When
#   several rules apply, any of their approvers may approve and the largest count and shortest
#   ttl hold. The proxy decides again once enough approvals are in: input.approval.approved_by
#   lists who approved (each one allowed by operations.rego's "approve"; never the requester).
#   A caller holding one of data.imaging.approvals.break_glass_roles who sends
#   input.purpose.break_glass with a justification goes ahead at once: break_glass in the answer.
package imaging.approvals

import data.imaging.caller

# The rules this update meets (indexes into data.imaging.approvals.rules).
applying contains i if {
	some i, rule in data.imaging.approvals.rules
	touches(rule.tags)
	not exempt(rule)
}

touches(tags) if {
	some change in input.changes
	change.tag in tags
}

exempt(rule) if {
	some role in rule.exempt_roles
	role in caller.roles
}

needed if count(applying) > 0

approval := {
	"approvers": {
		"roles": sort({role | some i in applying; some role in data.imaging.approvals.rules[i].approvers.roles}),
		"principals": sort({p | some i in applying; some p in data.imaging.approvals.rules[i].approvers.principals}),
	},
	"count": max({data.imaging.approvals.rules[i].count | some i in applying}),
	"ttl_seconds": min({data.imaging.approvals.rules[i].ttl_seconds | some i in applying}),
}

reasons contains sprintf("%s needs approval", [data.imaging.approvals.rules[i].name]) if some i in applying

# Approvers the proxy recorded, other than the requester (it never records the requester).
approved if {
	needed
	others := {p | some p in input.approval.approved_by; p != input.caller.principal}
	count(others) >= approval.count
}

# Allowed by the update rules, but waiting for approval.
pending if {
	data.imaging.update.allow
	needed
	not approved
	not glass_broken
}

glass_broken if {
	data.imaging.update.allow
	needed
	not approved
	input.purpose.break_glass == true
	break_glass_holder
}

break_glass_holder if {
	some role in data.imaging.approvals.break_glass_roles
	role in caller.roles
}

# Patient identifiers (data.imaging.patient_identifiers): changes need a justification.
touches_identifier if {
	some change in input.changes
	data.imaging.patient_identifiers[change.tag]
}
