"""The Dockerfile without an engine: its build stage's COPY set, `pip install .` into the same
venv path layout, and the final stage's USER, WORKDIR, ENV, ENTRYPOINT and CMD."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


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
    context = work / "src"
    for source, destination in copy_set(text):
        origin, target = ROOT / source, context / destination
        if origin.is_dir():
            shutil.copytree(
                origin,
                target / "" if destination.endswith("/") else target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            target = target / origin.name if destination.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    copied = frozenset(p.name for p in context.iterdir())
    venv = work / "opt" / "imaging-proxy"
    _run([base_python(), "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "--quiet", "."], cwd=context, timeout=900)
    final = stages(text)[-1]
    entrypoint = tuple(json.loads(next(a for op, a in final if op == "ENTRYPOINT")))
    cmd = tuple(json.loads(next(a for op, a in final if op == "CMD")))
    uid, gid = next(a for op, a in final if op == "USER").split(":")
    workdir = next(a for op, a in final if op == "WORKDIR")
    env: dict[str, str] = {}
    for op, args in final:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
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
    candidates = [os.path.realpath(sys._base_executable), "/usr/local/bin/python3.11"]
    candidates.append("/usr/bin/python3.11")
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and all(os.stat(p).st_mode & 0o001 for p in path.parents):
            return str(path)
    raise FileNotFoundError("no Python 3.11 that other users may run: " + ", ".join(candidates))


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 300) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
