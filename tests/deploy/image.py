"""The Dockerfile without an engine: its build stage's COPY set (less what .dockerignore drops),
its `pip install` into the same venv path layout, and the final stage's USER, WORKDIR, ENV,
ENTRYPOINT and CMD."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for op, args in instructions(text):
        if op == "FROM":
            found.append([])
        found[-1].append((op, args))
    return found


def copy_set(text: str) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context (not `--from=`)."""
    pairs = []
    for op, args in instructions(text):
        if op == "COPY" and "--from=" not in args:
            *sources, destination = args.split()
            pairs += [(source, destination) for source in sources]
    return pairs


def pip_install(text: str) -> list[str]:
    """The arguments of the build stage's `pip install` (`RUN pip install ./client . && …`)."""
    for op, args in instructions(text):
        for command in args.split("&&") if op == "RUN" else []:
            argv = shlex.split(command)
            if argv[:2] == ["pip", "install"]:
                return argv[2:]
    raise AssertionError("the Dockerfile installs nothing with pip")


def ignore_patterns(text: str) -> list[str]:
    patterns = [line.strip() for line in text.splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not modelled here"
    return patterns


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops this context path (a dropped folder drops what it holds;
    `**/` also matches no folder at all)."""
    return any(
        fnmatch.fnmatchcase(relative, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatchcase(relative, pattern[3:]))
        for pattern in patterns
    )


@dataclass(frozen=True)
class Image:
    """The final stage, as far as a process needs it."""

    venv: Path
    context: Path
    copied: frozenset[str]
    """What the build context held before the build: the COPY set's top-level names."""
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: tuple[int, int]
    workdir: str
    env: dict[str, str]

    def program(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def build(work: Path) -> Image:
    """Copy exactly the COPY set into a context, install it as the build stage's RUN does,
    and hand back the final stage's settings. The tree is root's and read-only to others."""
    text = DOCKERFILE.read_text()
    patterns = ignore_patterns(DOCKERIGNORE.read_text())

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).relative_to(ROOT)
        return {name for name in names if dockerignored((here / name).as_posix(), patterns)}

    context = work / "src"
    for source, destination in copy_set(text):
        origin, target = ROOT / source, context / destination
        assert not dockerignored(source.rstrip("/"), patterns), f"{source} is never sent"
        if origin.is_dir():
            shutil.copytree(
                origin,
                target / "" if destination.endswith("/") else target,
                dirs_exist_ok=True,
                ignore=ignore,
            )
        else:
            target = target / origin.name if destination.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    copied = frozenset(p.name for p in context.iterdir())
    venv = work / "opt" / "imaging-proxy"
    _run([base_python(), "-m", "venv", str(venv)])
    install = [str(venv / "bin" / "pip"), "install", "--quiet", *pip_install(text)]
    _run(install, cwd=context, timeout=900)
    final = stages(text)[-1]
    entrypoint = tuple(json.loads(next(a for op, a in final if op == "ENTRYPOINT")))
    cmd = tuple(json.loads(next(a for op, a in final if op == "CMD")))
    uid, gid = next(a for op, a in final if op == "USER").split(":")
    workdir = next(a for op, a in final if op == "WORKDIR")
    env: dict[str, str] = {}
    for op, args in final:
        if op == "ENV":
            env.update(pair.partition("=")[::2] for pair in args.split())
    env["PATH"] = (
        env["PATH"]
        .replace("/opt/imaging-proxy/bin", str(venv / "bin"))
        .replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    )
    for path in [work, *work.rglob("*")]:  # root's, readable by all, writable by none else
        if not path.is_symlink():
            os.chmod(
                path, (os.stat(path).st_mode & 0o755) | 0o444 | (0o111 if path.is_dir() else 0)
            )
    return Image(venv, context, copied, entrypoint, cmd, (int(uid), int(gid)), workdir, env)


def base_python() -> str:
    """A Python 3.11 the image's user can run (as the image's /usr/local/bin/python is): ours if
    every folder above it is open to others, else the system's."""
    ours = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    candidates = [ours, "/usr/local/bin/python3.11", "/usr/bin/python3.11"]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and all(os.stat(p).st_mode & 0o001 for p in path.parents):
            return str(path)
    raise FileNotFoundError("no Python 3.11 that other users may run: " + ", ".join(candidates))


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 300) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
