"""The normaliser (pure, no I/O): an UpdateImageSetMetadata request → a validated `UpdatePlan`
whose every touched attribute is classified. `updates` (the request's ids, versions and keys),
`jsondoc` (strict JSON), `documents` (the document's structure), `values` (VR and VM formats),
`dicom` (the standard's facts per attribute: pydicom, PS3.15), `purpose` (purpose of use,
justification, ticket).
"""
