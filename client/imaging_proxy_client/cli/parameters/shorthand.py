"""The AWS CLI's shorthand syntax (`DICOMUpdates={updatableAttributes=...}`): text in, dict out.

Ported from awscli/shorthand.py (aws-cli 1.46, Copyright Amazon.com, Inc. or its affiliates,
Apache License 2.0, http://aws.amazon.com/apache2.0/): the same grammar, regular expressions and
error messages, typed, without the model-driven back-compat visitor (this command has no list or
number members to coerce). `key@=file://path` and `key@=fileb://path` load a value from a file.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

ShorthandValue = str | bytes | list["ShorthandValue"] | dict[str, "ShorthandValue"]
FileLoader = Callable[[str], str | bytes | None]
"""Resolves `file://` / `fileb://` values; returns None when the value is no file reference."""

_KEY_CHARS = string.ascii_letters + string.digits + "-_.#/:"
_START_WORD = r"\!\#-&\(-\+\--\<\>-Z\\\\-z\u007c-\uffff"
_FIRST_FOLLOW_CHARS = r"\s\!\#-&\(-\+\--\\\\\^-\|~-\uffff"
_SECOND_FOLLOW_CHARS = r"\s\!\#-&\(-\+\--\<\>-\uffff"
_ESCAPED_COMMA = r"(\\,)"


class _NamedRegex:
    def __init__(self, name: str, pattern: str) -> None:
        self.name = name
        self.regex = re.compile(pattern, re.UNICODE)


_SINGLE_QUOTED = _NamedRegex("singled quoted", r"\'(?:\\\'|[^\'])*\'")
_DOUBLE_QUOTED = _NamedRegex("double quoted", r'"(?:\\"|[^"])*"')
_FIRST_VALUE = _NamedRegex(
    "first", f"({_ESCAPED_COMMA}|[{_START_WORD}])({_ESCAPED_COMMA}|[{_FIRST_FOLLOW_CHARS}])*"
)
_SECOND_VALUE = _NamedRegex(
    "second", f"({_ESCAPED_COMMA}|[{_START_WORD}])({_ESCAPED_COMMA}|[{_SECOND_FOLLOW_CHARS}])*"
)


class ShorthandParseError(Exception):
    """The value is not valid shorthand syntax; the message points at the offending character."""

    def __init__(self, value: str, index: int, message: str) -> None:
        super().__init__(message)
        self.value = value
        self.index = index


def _error_location(value: str, index: int) -> str:
    consumed, remaining, num_spaces = value, "", index
    if "\n" in value[:index]:
        num_spaces = index - value[:index].rindex("\n") - 1
    if "\n" in value[index:]:
        next_newline = index + value[index:].index("\n")
        consumed, remaining = value[:next_newline], value[next_newline:]
    return f"{consumed}\n{' ' * num_spaces}^{remaining}"


def _syntax_error(value: str, expected: str, actual: str, index: int) -> ShorthandParseError:
    location = _error_location(value, index)
    message = f"Expected: '{expected}', received: '{actual}' for input:\n{location}"
    return ShorthandParseError(value, index, message)


def _duplicate_key_error(key: str, value: str, index: int) -> ShorthandParseError:
    message = (
        f'Second instance of key "{key}" encountered for input:\n'
        f"{_error_location(value, index)}\n"
        'This is often because there is a preceding "," instead of a space.'
    )
    return ShorthandParseError(value, index, message)


def _no_files(_value: str) -> str | bytes | None:
    return None


class ShorthandParser:
    """Parses one shorthand value; `parse('a=b,c={d=e}')` is `{'a': 'b', 'c': {'d': 'e'}}`."""

    def __init__(self, load_file: FileLoader = _no_files) -> None:
        self._load_file = load_file
        self._input = ""
        self._index = 0
        self._resolve_files = False

    def parse(self, value: str) -> dict[str, ShorthandValue]:
        self._input, self._index, self._resolve_files = value, 0, False
        return self._parameter()

    def _parameter(self) -> dict[str, ShorthandValue]:
        params: dict[str, ShorthandValue] = {}
        key, val = self._keyval()
        params[key] = val
        last_index = self._index
        while self._index < len(self._input):
            self._expect(",", consume_whitespace=True)
            key, val = self._keyval()
            if key in params:
                raise _duplicate_key_error(key, self._input, last_index + 1)
            params[key] = val
            last_index = self._index
        return params

    def _keyval(self) -> tuple[str, ShorthandValue]:
        key = self._key()
        self._resolve_files = self._optional_at()
        self._expect("=", consume_whitespace=True)
        return key, self._values()

    def _optional_at(self) -> bool:
        try:
            self._expect("@", consume_whitespace=True)
        except ShorthandParseError:
            return False
        return True

    def _key(self) -> str:
        start = self._index
        while not self._at_eof() and self._input[self._index] in _KEY_CHARS:
            self._index += 1
        return self._input[start : self._index]

    def _values(self) -> ShorthandValue:
        if self._at_eof():
            return ""
        if self._current() == "[":
            return self._explicit_list()
        if self._current() == "{":
            return self._hash_literal()
        return self._csv_value()

    def _csv_value(self) -> ShorthandValue:
        first_value = self._first_value()
        self._consume_whitespace()
        if self._at_eof() or self._input[self._index] != ",":
            return first_value
        self._expect(",", consume_whitespace=True)
        csv_list: list[ShorthandValue] = [first_value]
        while True:
            try:
                current = self._second_value()
                self._consume_whitespace()
                if self._at_eof():
                    csv_list.append(current)
                    break
                self._expect(",", consume_whitespace=True)
                csv_list.append(current)
            except ShorthandParseError:
                # `a=b,c=d`: the `c` was a key, not a list element; back up to the comma.
                if self._at_eof():
                    raise
                self._backtrack_to(",")
                break
        return first_value if len(csv_list) == 1 else csv_list

    def _value(self) -> ShorthandValue:
        match = _FIRST_VALUE.regex.match(self._input[self._index :])
        if match is None:
            return ""
        consumed = self._consume_matched(match)
        return self._maybe_file(consumed.replace("\\,", ",").rstrip())

    def _explicit_list(self) -> list[ShorthandValue]:
        self._expect("[", consume_whitespace=True)
        values: list[ShorthandValue] = []
        while self._current() != "]":
            values.append(self._explicit_values())
            self._consume_whitespace()
            if self._current() != "]":
                self._expect(",")
                self._consume_whitespace()
        self._expect("]")
        return values

    def _explicit_values(self) -> ShorthandValue:
        if self._current() == "[":
            return self._explicit_list()
        if self._current() == "{":
            return self._hash_literal()
        return self._first_value()

    def _hash_literal(self) -> dict[str, ShorthandValue]:
        self._expect("{", consume_whitespace=True)
        keyvals: dict[str, ShorthandValue] = {}
        while self._current() != "}":
            key = self._key()
            self._resolve_files = self._optional_at()
            self._expect("=", consume_whitespace=True)
            value = self._explicit_values()
            self._consume_whitespace()
            if self._current() != "}":
                self._expect(",")
                self._consume_whitespace()
            keyvals[key] = value
        self._expect("}")
        return keyvals

    def _first_value(self) -> ShorthandValue:
        if self._current() == "'":
            return self._maybe_file(self._consume_quoted(_SINGLE_QUOTED, "'"))
        if self._current() == '"':
            return self._maybe_file(self._consume_quoted(_DOUBLE_QUOTED, '"'))
        return self._value()

    def _second_value(self) -> ShorthandValue:
        if self._current() in ("'", '"'):
            return self._first_value()
        consumed = self._must_consume(_SECOND_VALUE)
        return self._maybe_file(consumed.replace("\\,", ",").rstrip())

    def _consume_quoted(self, regex: _NamedRegex, escaped_char: str) -> str:
        value = self._must_consume(regex)[1:-1]
        return value.replace("\\" + escaped_char, escaped_char).replace("\\\\", "\\")

    def _maybe_file(self, value: str) -> ShorthandValue:
        if not self._resolve_files:
            return value
        loaded = self._load_file(value)
        return value if loaded is None else loaded

    def _expect(self, char: str, consume_whitespace: bool = False) -> None:
        if consume_whitespace:
            self._consume_whitespace()
        if self._index >= len(self._input):
            raise _syntax_error(self._input, char, "EOF", self._index)
        actual = self._input[self._index]
        if actual != char:
            raise _syntax_error(self._input, char, actual, self._index)
        self._index += 1
        if consume_whitespace:
            self._consume_whitespace()

    def _must_consume(self, regex: _NamedRegex) -> str:
        match = regex.regex.match(self._input[self._index :])
        if match is None:
            raise _syntax_error(self._input, f"<{regex.name}>", "<none>", self._index)
        return self._consume_matched(match)

    def _consume_matched(self, match: re.Match[str]) -> str:
        start, end = match.span()
        consumed = self._input[self._index + start : self._index + end]
        self._index += end - start
        return consumed

    def _current(self) -> str | None:
        return self._input[self._index] if self._index < len(self._input) else None

    def _at_eof(self) -> bool:
        return self._index >= len(self._input)

    def _backtrack_to(self, char: str) -> None:
        while self._index >= 0 and self._input[self._index] != char:
            self._index -= 1

    def _consume_whitespace(self) -> None:
        while (current := self._current()) is not None and current in string.whitespace:
            self._index += 1
