"""Reading a verb's parameters as the AWS CLI does: `params` (options, --cli-input-json/yaml,
--generate-cli-skeleton), `shorthand` (its shorthand syntax), `shapes` (validation against the
operation's input shape)."""
