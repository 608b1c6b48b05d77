# METADATA
# title: The caller's effective roles on the requested datastore
# description: |
#   roles = grants in data.imaging.grants[<datastore_id>][<principal>]
#             ∪ grants in data.imaging.grants["*"][<principal>] (valid in every datastore)
#             ∪ verified JWT roles from input.caller.roles: a plain role name holds in every
#               datastore, "<role>@<datastore_id>" only in that datastore.
#   Only the role names listed in data.imaging.roles count; anything else is ignored.
package imaging.caller

roles contains role if {
	some role in data.imaging.grants[input.request.datastore_id][input.caller.principal]
	data.imaging.roles[role]
}

roles contains role if {
	some role in data.imaging.grants["*"][input.caller.principal]
	data.imaging.roles[role]
}

roles contains role if {
	some role in input.caller.roles
	data.imaging.roles[role]
}

# A JWT role scoped to one datastore, written "<role>@<datastore_id>".
roles contains role if {
	some scoped in input.caller.roles
	[role, datastore_id] := split(scoped, "@")
	datastore_id == input.request.datastore_id
	data.imaging.roles[role]
}
