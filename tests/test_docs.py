"""The docs name only what exists: every repository path in README.md, docs/*.md and
benchmarks/README.md (a backticked path or a relative link) is in the checkout, and every module
they run with `python -m` is a file of it (or, for a tool such as `build`, importable).

Reads the files and nothing else. A path at an old commit is written as git names it,
`<commit>:<path>` (`git show 779229c:service/journal.py`), and is not checked."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
)

# A span whose first part is one of these names a path in this repository.
TOP_LEVEL = frozenset(
    {
        "service", "client", "devstack", "emulator", "medical_imaging_model", "policies", "protos",
        "tests", "deploy", "benchmarks", "docs", ".ci",
        "Dockerfile", "Makefile", "MANIFEST.in", "pyproject.toml", "setup.py", "README.md",
    }
)  # fmt: skip
# Made by `make`, a run or a wheel build; never in a clean checkout.
OUTSIDE = frozenset({".venv", ".tools", "dist", "build", ".soak", ".."})
PLACEHOLDER = re.compile(r"[*<>…{}$\s]|://")
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
RUN_MODULE = re.compile(r"python3? -m\s+([\w.]+)(<?)")
_FOLDERS = "|".join(re.escape(top) for top in sorted(TOP_LEVEL) if "." not in top[1:])
IN_COMMAND = re.compile(rf"(?<![\w./@=-])((?:{_FOLDERS})/[\w./-]*)")
MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Named:
    """Something a doc names: where, and as what."""

    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _name(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


def prose(markdown: str, *, code: bool = False) -> str:
    """The text outside fenced code blocks (or, with `code`, inside them), the rest blanked so
    line numbers stay."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append(line if fenced == code else "")
    return "\n".join(lines)


def repo_path(span: str) -> str | None:
    """The repository path a backticked span names, or None when it names none."""
    span = span.split("::")[0]  # a pytest node id: its file
    span = re.sub(r":\d+$", "", span)  # file:line
    # `:` left: a scheme (`jwt:…`) or a path at a commit (`779229c:service/journal.py`)
    if PLACEHOLDER.search(span) or ":" in span or span.startswith(("/", "~")):
        return None
    first = span.split("/")[0]
    if first in OUTSIDE:
        return None
    if first in TOP_LEVEL or span.endswith(".py"):
        return span
    return None


def backticked_paths(doc: Path) -> Iterator[Named]:
    text = prose(doc.read_text(encoding="utf-8"))
    for match in SPAN.finditer(text):
        path = repo_path(match.group(1))
        if path is not None:
            yield Named(_name(doc), text.count("\n", 0, match.start()) + 1, path)


def commanded_paths(doc: Path) -> Iterator[Named]:
    """Paths in code blocks that start with a folder of the repository (`pytest tests/unit/…`);
    one after `=` or `@` is a command's output or option value and is left alone."""
    text = prose(doc.read_text(encoding="utf-8"), code=True)
    for match in IN_COMMAND.finditer(text):
        path = match.group(1).rstrip(".,;:")
        yield Named(_name(doc), text.count("\n", 0, match.start()) + 1, path)


def linked_paths(doc: Path) -> Iterator[Named]:
    """Relative link targets that stay inside the repository, as paths from its root."""
    text = prose(doc.read_text(encoding="utf-8"))
    for match in LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if not target or ":" in target:
            continue
        resolved = (doc.parent / target).resolve()
        if resolved.is_relative_to(ROOT):
            line = text.count("\n", 0, match.start()) + 1
            yield Named(_name(doc), line, resolved.relative_to(ROOT).as_posix())


def run_modules(doc: Path) -> Iterator[Named]:
    text = doc.read_text(encoding="utf-8")
    for match in RUN_MODULE.finditer(text):
        module = match.group(1).rstrip(".")
        if not match.group(2) and MODULE.match(module):  # `benchmarks.<name>` names none
            yield Named(_name(doc), text.count("\n", 0, match.start()) + 1, module)


def _python_files() -> frozenset[str]:
    return frozenset(
        path.relative_to(ROOT).as_posix()
        for top in TOP_LEVEL
        if (ROOT / top).is_dir()
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def exists(path: str, python_files: frozenset[str]) -> bool:
    """A path from the root exists as named (a folder when it ends in /); a bare `name.py` or
    `folder/name.py` not from the root is the end of some Python file's path."""
    if path.split("/")[0] not in TOP_LEVEL:
        return any(file == path or file.endswith("/" + path) for file in python_files)
    found = ROOT / path
    return found.is_dir() if path.endswith("/") else found.exists()


def module_is_there(module: str) -> bool:
    parts = module.split(".")
    if (ROOT / parts[0]).is_dir():
        here = ROOT.joinpath(*parts)
        return here.with_suffix(".py").is_file() or (here / "__main__.py").is_file()
    return importlib.util.find_spec(parts[0]) is not None  # a tool: `python -m build`


def test_the_docs_name_only_paths_that_exist() -> None:
    python_files = _python_files()
    named = [
        n
        for doc in DOCS
        for n in (*backticked_paths(doc), *linked_paths(doc), *commanded_paths(doc))
    ]
    # The reading itself must work: a regex that finds nothing would pass every time.
    assert {"service/operations/runner.py", "docs/CLI.md", "tests/e2e/test_fairness.py"} <= {
        n.text for n in named
    }
    missing = [str(n) for n in named if not exists(n.text, python_files)]
    assert not missing, "paths the docs name that do not exist:\n" + "\n".join(missing)


def test_every_python_dash_m_the_docs_run_is_a_module() -> None:
    named = [n for doc in DOCS for n in run_modules(doc)]
    assert "benchmarks.hot_calls" in {n.text for n in named}
    missing = [str(n) for n in named if not module_is_there(n.text)]
    assert not missing, "`python -m` modules the docs run that do not exist:\n" + "\n".join(missing)


def test_what_counts_as_a_repository_path() -> None:
    assert repo_path("service/core/model.py") == "service/core/model.py"
    assert repo_path("tests/unit/") == "tests/unit/"
    assert repo_path("tests/cli/test_serve.py::test_x") == "tests/cli/test_serve.py"
    assert repo_path("runner.py") == "runner.py"
    for elsewhere in (
        "779229c:service/journal.py",
        "https://example.org/service/x.py",
        "policies/**/*_test.rego",
        "build/bench/<name>.json",
        "/etc/imaging-proxy/tls/",
        ".venv/bin/imaging-proxy",
        "dist/imaging_proxy_client-0.1.0.whl",
        "application/json",
        "imaging-proxy serve",
    ):
        assert repo_path(elsewhere) is None, elsewhere
    assert not exists("no_such_module.py", frozenset({"service/core/model.py"}))
    assert exists("core/model.py", frozenset({"service/core/model.py"}))
