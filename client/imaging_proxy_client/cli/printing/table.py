"""The AWS CLI's `--output table` renderer: sections of bordered rows, vertical when too wide.

Ported from awscli/table.py and awscli/formatter.py's TableFormatter (aws-cli 1.46, Copyright
Amazon.com, Inc. or its affiliates, Apache License 2.0, http://aws.amazon.com/apache2.0/), typed
and without colorama: the colours are the same ANSI sequences written directly.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

_BRIGHT_BLUE = "\x1b[1m\x1b[34m"
_DIM_YELLOW = "\x1b[2m\x1b[33m"
_RESET = "\x1b[0m"


def text_length(text: object) -> int:
    """Display width: East Asian wide, full-width and ambiguous characters count twice."""
    return sum(2 if unicodedata.east_asian_width(c) in "WFA" else 1 for c in str(text))


def center_text(text: str, length: int, left_edge: str = "|") -> str:
    width = text_length(text)
    char_start = (length // 2) - (width // 2) - 1
    so_far = len(left_edge) + char_start + width
    return left_edge + " " * char_start + text + " " * (length - 1 - so_far) + "|"


def align_left(text: str, length: int, left_edge: str, text_len: int) -> str:
    computed = text_len + 2 + len(left_edge) + 1
    padding = 2 if length - computed >= 0 else 0
    so_far = len(left_edge) + padding + text_len
    return left_edge + " " * padding + text + " " * (length - so_far - 1) + "|"


class TextSink(Protocol):
    """Where rendered lines go (a text stream, or a list collector)."""

    def write(self, text: str, /) -> object: ...


class Styler:
    """Plain output (`--color off`, or `auto` when stdout is not a terminal)."""

    def row_element(self, text: str) -> str:
        return text

    def indentation_char(self, text: str) -> str:
        return text


class ColorStyler(Styler):
    """The AWS CLI's colours: bright blue values, dim yellow indentation bars."""

    def row_element(self, text: str) -> str:
        return _BRIGHT_BLUE + text + _RESET

    def indentation_char(self, text: str) -> str:
        return _DIM_YELLOW + text + _RESET


class Section:
    """A titled block: optional header row and rows of cells."""

    def __init__(self, title: str = "", indent_level: int = 0) -> None:
        self.title = title
        self.indent_level = indent_level
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._num_cols: int | None = None
        self._max_widths: list[int] = []

    def add_header(self, headers: Sequence[str]) -> None:
        self._update_max_widths(headers)
        if self._num_cols is None:
            self._num_cols = len(headers)
        self.headers = list(headers)

    def add_row(self, row: Sequence[Any]) -> None:
        if self._num_cols is None:
            self._num_cols = len(row)
        if len(row) != self._num_cols:
            raise ValueError(
                f"Row should have {self._num_cols} elements, instead it has {len(row)}"
            )
        cells = [str(r) for r in row]
        self.rows.append(cells)
        self._update_max_widths(cells)

    def _update_max_widths(self, row: Sequence[str]) -> None:
        if not self._max_widths:
            self._max_widths = [text_length(el) for el in row]
        else:
            for i, el in enumerate(row):
                self._max_widths[i] = max(text_length(el), self._max_widths[i])

    def column_widths(self, padding: int = 0, max_width: int | None = None) -> list[int]:
        unscaled = [w + padding for w in self._max_widths]
        if max_width is None or not unscaled:
            return unscaled
        scale = max_width / float(sum(unscaled))
        scaled = [round(scale * w) for w in unscaled]
        off_by = sum(scaled) - max_width
        while off_by != 0:
            order = range(len(scaled)) if off_by > 0 else reversed(range(len(scaled)))
            for i in order:
                step = 1 if off_by > 0 else -1
                scaled[i] -= step
                off_by -= step
                if off_by == 0:
                    break
        return scaled

    def total_width(self, padding: int = 0, outer_padding: int = 0) -> int:
        total = sum(w + padding for w in self.column_widths()) + 2 + 2 * outer_padding
        return max(text_length(self.title) + 2 + 2 * outer_padding, total)


class MultiTable:
    """All sections of one response, rendered to a common width."""

    def __init__(self, terminal_width: int, styler: Styler) -> None:
        self._terminal_width = terminal_width
        self._styler = styler
        self._sections: list[Section] = []

    @property
    def current(self) -> Section:
        return self._sections[-1]

    def new_section(self, title: str, indent_level: int = 0) -> None:
        self._sections.append(Section(title, indent_level))

    def render(self, stream: TextSink) -> None:
        max_width = self._max_width()
        if max_width > self._terminal_width:
            self._convert_to_vertical()
            max_width = self._max_width()
        stream.write("-" * max_width + "\n")
        for section in self._sections:
            self._render_section(section, max_width, stream)

    def _max_width(self) -> int:
        return max(s.total_width(padding=4, outer_padding=s.indent_level) for s in self._sections)

    def _convert_to_vertical(self) -> None:
        # A one-row section with headers becomes header | value rows.
        for i, section in enumerate(self._sections):
            if len(section.rows) == 1 and section.headers:
                vertical = Section(section.title, section.indent_level)
                for header, element in zip(section.headers, section.rows[0], strict=False):
                    vertical.add_row([header, element])
                self._sections[i] = vertical

    def _render_section(self, section: Section, max_width: int, stream: TextSink) -> None:
        out = _IndentedStream(stream, section.indent_level, self._styler.indentation_char("|"))
        max_width -= section.indent_level * 2
        if section.title:
            out.write(center_text(section.title, max_width) + "\n")
            if not section.headers and not section.rows:
                out.write("+%s+" % ("-" * (max_width - 2)) + "\n")
        self._render_headers(section, max_width, out)
        self._render_rows(section, max_width, out)

    def _render_headers(self, section: Section, max_width: int, out: _IndentedStream) -> None:
        if not section.headers:
            return
        widths = section.column_widths(padding=4, max_width=max_width)
        line = ""
        for i, (width, header) in enumerate(zip(widths, section.headers, strict=False)):
            line += center_text(header, width, "|" if i == 0 else "")
        out.write(_line_break(widths))
        out.write(line + "\n")

    def _render_rows(self, section: Section, max_width: int, out: _IndentedStream) -> None:
        if not section.rows:
            return
        widths = section.column_widths(padding=4, max_width=max_width)
        if not widths:
            return
        out.write(_line_break(widths))
        for row in section.rows:
            line = ""
            for i, (width, element) in enumerate(zip(widths, row, strict=False)):
                styled = self._styler.row_element(element)
                line += align_left(styled, width, "|" if i == 0 else "", text_length(element))
            out.write(line + "\n")
        out.write(_line_break(widths))


def _line_break(widths: Sequence[int]) -> str:
    parts = [("+" + "-" * (w - 2)) if i == 0 else ("-" * (w - 1)) for i, w in enumerate(widths)]
    return "+".join(parts) + "+\n"


class _IndentedStream:
    def __init__(self, stream: TextSink, indent_level: int, indent_char: str) -> None:
        self._stream = stream
        self._indent = indent_char * indent_level

    def write(self, text: str) -> None:
        self._stream.write(self._indent)
        if text.endswith("\n"):
            self._stream.write(text[:-1] + self._indent + "\n")
        else:
            self._stream.write(text)


# --- building sections from a response (formatter.TableFormatter) ---------------------------


def _is_scalar(value: object) -> bool:
    return not isinstance(value, list | dict)


def _group_scalar_keys(current: dict[str, Any]) -> tuple[list[str], list[str]]:
    headers = sorted(k for k, v in current.items() if _is_scalar(v))
    more = sorted(k for k, v in current.items() if not _is_scalar(v))
    return headers, more


def build_table(table: MultiTable, title: str | None, current: Any, indent_level: int = 0) -> bool:
    """Add `current` (a response, or part of it) to `table`; False when there is nothing to show."""
    if not current:
        return False
    if title is not None:
        table.new_section(title, indent_level)
    if isinstance(current, list):
        _build_from_list(table, title, current, indent_level)
    if isinstance(current, dict):
        _build_from_dict(table, current, indent_level)
    return True


def _build_from_list(table: MultiTable, title: str | None, current: list[Any], indent: int) -> None:
    if isinstance(current[0], dict):
        _build_from_list_of_dicts(table, title, current, indent)
        return
    for item in current:
        if _is_scalar(item):
            table.current.add_row([item])
        elif all(_is_scalar(el) for el in item):
            table.current.add_row(item)
        else:
            build_table(table, None, item)


def _build_from_dict(table: MultiTable, current: dict[str, Any], indent: int) -> None:
    headers, more = _group_scalar_keys(current)
    if len(headers) == 1:
        table.current.add_row([headers[0], current[headers[0]]])
    elif headers:
        table.current.add_header(headers)
        table.current.add_row([current[k] for k in headers])
    for remaining in more:
        build_table(table, remaining, current[remaining], indent + 1)


def _build_from_list_of_dicts(
    table: MultiTable, title: str | None, current: list[dict[str, Any]], indent: int
) -> None:
    header_set: set[str] = set()
    more_set: set[str] = set()
    for item in current:
        item_headers, item_more = _group_scalar_keys(item)
        header_set.update(item_headers)
        more_set.update(item_more)
    headers, more = sorted(header_set), sorted(more_set)
    table.current.add_header(headers)
    for i, element in enumerate(current):
        if i > 0 and more:
            table.new_section(title or "", indent)
            table.current.add_header(headers)
        table.current.add_row([element.get(h, "") for h in headers])
        for remaining in more:
            if remaining in element:
                build_table(table, remaining, element[remaining], indent + 1)
