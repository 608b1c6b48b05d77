"""A rendered pod run as local processes: each container's command and args, its environment,
its ConfigMap and Secret volumes laid out the kubelet's way, its probes run as written.

What a laptop must change, and only that: the pod's absolute paths live under a folder of their
own, Service names and 0.0.0.0 become 127.0.0.1 (loopback only), and an image's entrypoint is the
local program (the wheel's `imaging-proxy`, `opa`, `redis-server`). As root, each container runs
as its securityContext's user, with the fsGroup owning its Secret files.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import Child
from tests.deploy import kubelet

Objects = Mapping[tuple[str, str], Mapping[str, bytes]]
"""(kind, name) of each rendered ConfigMap and Secret (and those the operator creates) → data."""

SERVING = health_pb2.HealthCheckResponse.SERVING


def rendered_objects(documents: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
    return {
        (d["kind"], d["metadata"]["name"]): kubelet.object_data(d)
        for d in documents
        if d["kind"] in ("ConfigMap", "Secret")
    }


@dataclass
class Pod:
    """One pod template (a Deployment's or a StatefulSet's) run under `root`."""

    spec: Mapping[str, Any]
    objects: Objects
    root: Path
    entrypoints: Mapping[str, Sequence[str]]
    """Image name (without tag) → the local program standing in for its ENTRYPOINT."""
    hosts: Sequence[str] = ()
    """Service names the containers dial: 127.0.0.1 here."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """What the platform injects beside the rendered env (IRSA's credentials, the image's ENV)."""
    children: dict[str, Child] = field(default_factory=dict)

    # --- the kubelet's part -----------------------------------------------------------------

    def localise(self, container: Mapping[str, Any], text: str) -> str:
        """The container's mount paths under `root`, Service names and 0.0.0.0 on loopback."""
        for mount_path, _ in sorted(kubelet.mounts(self.spec, container), key=lambda m: -len(m[0])):
            local = str(self.path(mount_path))
            text = re.sub(rf"(?<![\w.]){re.escape(mount_path)}(?=[/\"'\s]|$)", local, text)
        for host in (*self.hosts, "0.0.0.0"):
            text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w.-])", "127.0.0.1", text)
        return text

    def path(self, pod_path: str) -> Path:
        return self.root / pod_path.lstrip("/")

    def fs_group(self) -> int | None:
        """The group owning Secret files and volumes (only root can hand files over)."""
        context = self.spec.get("securityContext") or {}
        return context.get("fsGroup") if os.geteuid() == 0 else None

    def lay_out_volumes(self) -> None:
        """Every mount of every container; configMap and secret volumes the kubelet's way."""
        for container in self.spec["containers"]:
            for mount_path, volume in kubelet.mounts(self.spec, container):
                self.write_volume(container, mount_path, volume, self.fs_group())

    def write_volume(
        self,
        container: Mapping[str, Any],
        mount_path: str,
        volume: Mapping[str, Any],
        group: int | None,
        override: Mapping[str, bytes] | None = None,
    ) -> Path | None:
        """Write (or update, with `override` as the object's new data) one volume."""
        target = self.path(mount_path)
        if "configMap" in volume or "secret" in volume:
            kind, source = (
                ("ConfigMap", volume["configMap"])
                if "configMap" in volume
                else ("Secret", volume["secret"])
            )
            name = source["name"] if kind == "ConfigMap" else source["secretName"]
            data = override if override is not None else self.objects[(kind, name)]
            files = kubelet.volume_files(source, data)
            if kind == "ConfigMap":  # settings name pod paths; Secrets are keys and passwords
                files = {p: self.localise(container, c.decode()).encode() for p, c in files.items()}
            mode = source.get("defaultMode", 0o644)
            return kubelet.write_volume(target, files, mode, group if kind == "Secret" else None)
        target.mkdir(parents=True, exist_ok=True)  # emptyDir, a PersistentVolume
        if group is not None:
            os.chown(target, 0, group)
            os.chmod(target, 0o2775)
        return None

    def update_object(self, kind: str, name: str, data: Mapping[str, bytes]) -> None:
        """An object changed in the cluster: the kubelet rewrites every volume showing it."""
        group = self.fs_group()
        for container in self.spec["containers"]:
            for mount_path, volume in kubelet.mounts(self.spec, container):
                source = volume.get("configMap") or volume.get("secret") or {}
                if source.get("name", source.get("secretName")) == name:
                    self.write_volume(container, mount_path, volume, group, override=data)

    # --- the containers ---------------------------------------------------------------------

    def container(self, name: str) -> Mapping[str, Any]:
        return next(c for c in self.spec["containers"] if c["name"] == name)

    def argv(self, container: Mapping[str, Any]) -> list[str]:
        env = kubelet.container_env(container, self.objects)
        line = [self.localise(container, part) for part in kubelet.command_line(container, env)]
        if container.get("command"):
            return line
        image = container["image"].rsplit(":", 1)[0]
        return [*self.entrypoints[image], *line]

    def env(self, container: Mapping[str, Any]) -> dict[str, str]:
        rendered = kubelet.container_env(container, self.objects)
        local = {k: self.localise(container, v) for k, v in rendered.items()}
        return {**self.extra_env, **local}

    def start(self, name: str, extra_args: Sequence[str] = ()) -> Child:
        container = self.container(name)
        argv = [*self.as_user(container), *self.argv(container), *extra_args]
        workdir = self.path("/var/lib/" + name)  # the image's WORKDIR, one per container
        workdir.mkdir(parents=True, exist_ok=True)
        user = self.user(container)
        if user is not None:
            os.chown(workdir, user[0], user[1])
        child = _spawn(name, argv, self.root.parent / "logs", self.env(container), workdir)
        self.children[name] = child
        return child

    def user(self, container: Mapping[str, Any]) -> tuple[int, int] | None:
        context = {
            **(self.spec.get("securityContext") or {}),
            **(container.get("securityContext") or {}),
        }
        if os.geteuid() != 0 or "runAsUser" not in context:
            return None
        return int(context["runAsUser"]), int(context.get("runAsGroup", context["runAsUser"]))

    def as_user(self, container: Mapping[str, Any]) -> list[str]:
        """setpriv to the container's user, group and fsGroup (nothing when not root)."""
        user = self.user(container)
        if user is None:
            return []
        group = (self.spec.get("securityContext") or {}).get("fsGroup", user[1])
        return [
            shutil.which("setpriv") or "setpriv",
            f"--reuid={user[0]}",
            f"--regid={user[1]}",
            f"--groups={group}",
            "--inh-caps=-all",
            "--",
        ]

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()

    # --- probes -----------------------------------------------------------------------------

    def probe(self, name: str, kind: str) -> bool:
        """Run the container's `kind` probe ("readinessProbe", …) once, as the kubelet would."""
        container = self.container(name)
        probe = container[kind]
        if "grpc" in probe:
            return grpc_health(
                _port(container, probe["grpc"]["port"]), probe["grpc"].get("service", "")
            )
        if "httpGet" in probe:
            get = probe["httpGet"]
            return http_get(_port(container, get["port"]), get.get("path", "/"))
        if "tcpSocket" in probe:
            return tcp_open(_port(container, probe["tcpSocket"]["port"]))
        raise AssertionError(f"probe kind not supported here: {sorted(probe)}")

    def probes(self, name: str) -> list[str]:
        return [
            k
            for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in self.container(name)
        ]


def _spawn(name: str, argv: list[str], logs: Path, env: Mapping[str, str], cwd: Path) -> Child:
    """Like devstack's spawn, but with the container's environment only (not ours)."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def _port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def grpc_health(port: int, service: str) -> bool:
    """grpc.health.v1 Check in plaintext, as the kubelet's gRPC probe does it."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
        return bool(response.status == SERVING)
    except grpc.RpcError:
        return False


def http_get(port: int, path: str) -> bool:
    """The kubelet's httpGet probe: success is a status from 200 to 399."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return 200 <= int(response.status) < 400
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False
