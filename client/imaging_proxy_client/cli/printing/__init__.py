"""Printing as the AWS CLI does: `output` (json, yaml, text, table; --query; the pager),
`table` (the table format), `progress` (the progress line on stderr), `why` (a denial's reasons)."""
