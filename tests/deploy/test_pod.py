"""The chart's pod run here: its containers' own command lines as processes (the proxy from the
Dockerfile's wheel, real OPA, real Redis), its volumes as the kubelet lays them out, its probes
as written; then callers over mTLS, a ConfigMap update and a signed bundle's new revision."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.polling import eventually_sync
from devstack.processes import free_port, wait_until
from devstack.servers import EMULATOR_AWS_ENV, EmulatorProcess, find_opa, start_emulator
from devstack.stack import StackSpec, emulator_args
from tests.deploy.chart import find, render
from tests.deploy.image import Image
from tests.deploy.pod import Pod, rendered_objects
from tests.support.stack import require_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
MAKE_CERTS = ROOT / "deploy" / "tls" / "make-certs.sh"
SPIFFE = "spiffe://hospital.example/ns/imaging/sa/"
EDITOR = SPIFFE + "editor"
PATIENT_ROLE = "patient-identity-editor"
PATIENT_NAME = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "DOE^JANE"}}}
STUDY_DESCRIPTION = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}


@dataclass(frozen=True)
class Cluster:
    """What the pod finds around it: the emulator for HealthImaging, Redis, the operator's
    Secrets, and a folder the containers' users can reach."""

    work: Path
    certs: Path
    emulator: EmulatorProcess
    redis_port: int
    redis_password: str
    ports: dict[str, int]

    def settings(self) -> dict[str, Any]:
        """Chart values a laptop must change: free ports and the emulator's endpoint."""
        return {
            "proxy.ports.grpc": self.ports["grpc"],
            "proxy.ports.health": self.ports["health"],
            "proxy.ports.metrics": self.ports["metrics"],
            "opa.port": self.ports["opa"],
            "opa.diagnosticPort": self.ports["diagnostic"],
            "redis.port": self.redis_port,
            "aws.endpointUrl": self.emulator.url,
        }

    def operator_secrets(self) -> dict[tuple[str, str], dict[str, bytes]]:
        """The two Secrets docs/DEPLOY.md has the operator create before installing."""
        tls = {name: (self.certs / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")}
        return {
            ("Secret", "imaging-proxy-tls"): tls,
            ("Secret", "imaging-proxy-redis"): {"password": self.redis_password.encode()},
        }


def make_certs(directory: Path) -> None:
    """make-certs.sh twice on one CA: the SPIFFE admin's client certificate, then the editor's."""
    subprocess.run(["bash", str(MAKE_CERTS), str(directory)], check=True, capture_output=True)
    for suffix in ("crt", "key"):
        (directory / f"client.{suffix}").rename(directory / f"admin.{suffix}")
    env = {**os.environ, "CLIENT_ID": EDITOR}
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(directory)], check=True, capture_output=True, env=env
    )
    for suffix in ("crt", "key"):
        (directory / f"client.{suffix}").rename(directory / f"editor.{suffix}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_redis_server()
    work = Path(tempfile.mkdtemp(prefix="imaging-proxy-cluster-"))
    os.chmod(work, 0o755)
    emulator = None
    redis_pod = None
    try:
        make_certs(work / "certs")
        emulator = start_emulator(work / "logs", emulator_args(StackSpec(image_sets=1), work))
        ports = {n: free_port() for n in ("grpc", "health", "metrics", "opa", "diagnostic")}
        cluster = Cluster(work, work / "certs", emulator, free_port(), secrets.token_hex(16), ports)
        documents = render(settings=cluster.settings())
        redis_pod = pod_of(
            find(documents, "StatefulSet", "imaging-proxy-redis"),
            documents,
            cluster,
            work / "redis",
        )
        redis_pod.lay_out_volumes()
        # The one addition: bind loopback only (a pod's network namespace is its own).
        child = redis_pod.start("redis", ["--bind", "127.0.0.1"])
        for probe in redis_pod.probes("redis"):
            wait_until(lambda p=probe: redis_pod.probe("redis", p), child, timeout=30)
        yield cluster
    finally:
        if redis_pod is not None:
            redis_pod.stop()
        if emulator is not None:
            emulator.child.stop()
        shutil.rmtree(work, ignore_errors=True)


def pod_of(
    workload: dict[str, Any],
    documents: list[dict[str, Any]],
    cluster: Cluster,
    root: Path,
    image: Image | None = None,
) -> Pod:
    objects = {**rendered_objects(documents), **cluster.operator_secrets()}
    entrypoints = {"openpolicyagent/opa": [find_opa()], "redis": []}
    extra = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    if image is not None:
        entrypoints["imaging-proxy"] = [image.program(image.entrypoint[0]), *image.entrypoint[1:]]
        # The image's ENV, and what IRSA or Pod Identity injects (here: the emulator's keys).
        extra = {**image.env, **EMULATOR_AWS_ENV}
    spec = dict(workload["spec"]["template"]["spec"])
    # A StatefulSet's claims become volumes of its pod (as its controller does).
    claims = [
        {
            "name": t["metadata"]["name"],
            "persistentVolumeClaim": {"claimName": t["metadata"]["name"]},
        }
        for t in workload["spec"].get("volumeClaimTemplates") or []
    ]
    spec["volumes"] = [*(spec.get("volumes") or []), *claims]
    return Pod(
        spec,
        objects,
        root,
        entrypoints,
        hosts=("imaging-proxy-redis",),
        extra_env=extra,
    )


def start_pod(pod: Pod) -> None:
    """Volumes first, then every container (the kubelet starts them together), then each
    probe of each container until it passes, as the kubelet's probes would."""
    pod.lay_out_volumes()
    children = {c["name"]: pod.start(c["name"]) for c in pod.spec["containers"]}
    for name, child in children.items():
        for probe in pod.probes(name):
            wait_until(lambda n=name, p=probe: pod.probe(n, p), child, timeout=60)


@pytest.fixture
def proxy_pod(cluster: Cluster, image: Image) -> Iterator[Pod]:
    documents = render(settings=cluster.settings())
    pod = pod_of(
        find(documents, "Deployment", "imaging-proxy"),
        documents,
        cluster,
        cluster.work / "pod-configmap",
        image,
    )
    try:
        start_pod(pod)
        yield pod
    finally:
        pod.stop()


def channel(cluster: Cluster, who: str) -> grpc.Channel:
    certs = cluster.certs
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{who}.key").read_bytes(),
        certificate_chain=(certs / f"{who}.crt").read_bytes(),
    )
    # The server certificate names localhost (make-certs.sh's SANs) besides the Service.
    return grpc.secure_channel(f"localhost:{cluster.ports['grpc']}", credentials)


def request(cluster: Cluster, document: dict[str, Any], version: str) -> Any:
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=cluster.emulator.datastore_id,
        image_set_id=cluster.emulator.image_set_ids[0],
        latest_version_id=version,
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
    )


def evaluate(cluster: Cluster, who: str, document: dict[str, Any]) -> bool:
    with channel(cluster, who) as ch:
        answer = pb_grpc.MetadataUpdateServiceStub(ch).EvaluateUpdate(
            request(cluster, document, "1"), timeout=10
        )
    return bool(answer.decision.allow)


def opa_data(cluster: Cluster, path: str = "") -> dict[str, Any]:
    """A document of OPA's data tree, from its API (on 127.0.0.1 only, as in the pod)."""
    url = f"http://127.0.0.1:{cluster.ports['opa']}/v1/data/{path}"
    with urllib.request.urlopen(url) as answer:
        return dict(json.load(answer)["result"])


def grant(pod: Pod, roles: list[str]) -> None:
    """Edit data.json in the policies ConfigMap; the kubelet swaps ..data (no restart)."""
    data = dict(pod.objects[("ConfigMap", "imaging-proxy-policies")])
    grants = json.loads(data["data.json"])
    grants["imaging"]["grants"]["*"][EDITOR] = roles
    data["data.json"] = json.dumps(grants).encode()
    pod.update_object("ConfigMap", "imaging-proxy-policies", data)


def test_the_pod_serves_the_spiffe_admin_refuses_the_editor_and_reloads_policies_live(
    cluster: Cluster, proxy_pod: Pod
) -> None:
    policies = proxy_pod.path("/policies")
    assert (policies / "..data").is_symlink() and (policies / "imaging").is_symlink()
    # Every document where policies/ puts it, nothing under the kubelet's hidden folder's name.
    data = opa_data(cluster)  # OPA leaves data.system out of the root document
    assert set(data) == {"imaging"}
    shipped = json.loads((ROOT / "policies" / "data.json").read_text())
    assert data["imaging"]["grants"] == shipped["imaging"]["grants"]
    assert {"caller", "update"} <= set(data["imaging"])
    assert "max_logged_changes" in opa_data(cluster, "system/log")  # the decision-log mask
    with channel(cluster, "admin") as ch:
        stub = pb_grpc.MetadataUpdateServiceStub(ch)
        events = list(
            stub.UpdateImageSetMetadata(request(cluster, STUDY_DESCRIPTION, "1"), timeout=120)
        )
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "authorized" and kinds[-1] == "finished", kinds
    assert events[-1].finished.state.image_set_state == "ACTIVE"
    # The journal is the pod's Redis, its URL (password and all) read from the environment:
    # never in the process list, where anyone in the pod could read it.
    with redis.Redis(port=cluster.redis_port, password=cluster.redis_password) as shared:
        assert shared.dbsize() > 0
    proxy = proxy_pod.children["imaging-proxy"]
    command_line = Path(f"/proc/{proxy.pid}/cmdline").read_bytes()
    assert b"serve" in command_line and cluster.redis_password.encode() not in command_line

    with channel(cluster, "editor") as ch, pytest.raises(grpc.RpcError) as refused:
        stub = pb_grpc.MetadataUpdateServiceStub(ch)
        list(stub.UpdateImageSetMetadata(request(cluster, PATIENT_NAME, "2"), timeout=30))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    started = {name: child.pid for name, child in proxy_pod.children.items()}
    grant(proxy_pod, ["metadata-editor", PATIENT_ROLE])
    eventually_sync(
        lambda: evaluate(cluster, "editor", PATIENT_NAME), within=30, until=bool, interval=0.5
    )
    assert {n: c.pid for n, c in proxy_pod.children.items() if c.running()} == started


# --- the production path: a signed bundle from a bundle service -------------------------------


class BundleServer:
    """A loopback HTTP server handing out the files of one folder (a bundle service); `served`
    lists every path it answered, in order."""

    def __init__(self, folder: Path) -> None:
        self.served: list[str] = []
        handler = functools.partial(_CountingHandler, directory=str(folder), served=self.served)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, served: list[str], **kwargs: Any) -> None:
        self._served = served
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        super().do_GET()
        self._served.append(self.path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def signing_key(path: Path) -> str:
    """A new RSA key written to `path` (PEM); its public half."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def build_bundle(policies: Path, out: Path, key: Path, editor_roles: list[str]) -> None:
    """`opa build` of the chart's policies with the editor's roles set, signed with `key`."""
    source = out.parent / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(policies, source)
    data = json.loads((source / "data.json").read_text())
    data["imaging"]["grants"]["*"][EDITOR] = editor_roles
    (source / "data.json").write_text(json.dumps(data))
    argv = [find_opa(), "build", "--bundle", str(source), "--output", str(out) + ".tmp"]
    argv += ["--signing-key", str(key), "--signing-alg", "RS256"]
    subprocess.run(argv, check=True, capture_output=True)
    Path(str(out) + ".tmp").replace(out)  # a new revision appears at once, never half written


@dataclass(frozen=True)
class BundlePod:
    pod: Pod
    server: BundleServer
    bundle: Path
    key: Path


POLICIES = ROOT / "deploy" / "helm" / "imaging-proxy" / "files" / "policies"


@pytest.fixture
def bundle_pod(cluster: Cluster, image: Image) -> Iterator[BundlePod]:
    """The pod with opa.bundle on, polling a loopback bundle service every 1 to 2 s, verifying
    signatures; the first revision grants the editor "metadata-editor" only."""
    folder = cluster.work / "bundles"
    folder.mkdir()
    key = cluster.work / "signing.pem"
    public = signing_key(key)
    bundle = folder / "bundle.tar.gz"
    build_bundle(POLICIES, bundle, key, ["metadata-editor"])
    server = BundleServer(folder)
    settings = {
        **cluster.settings(),
        "opa.bundle.enabled": True,
        "opa.bundle.url": server.url,
        "opa.bundle.resource": bundle.name,
        "opa.bundle.minDelaySeconds": 1,
        "opa.bundle.maxDelaySeconds": 2,
        "opa.bundle.signing.enabled": True,
        "opa.bundle.signing.publicKey": public,
    }
    documents = render(settings=settings)
    workload = find(documents, "Deployment", "imaging-proxy")
    pod = pod_of(workload, documents, cluster, cluster.work / "pod-bundle", image)
    try:
        start_pod(pod)
        yield BundlePod(pod, server, bundle, key)
    finally:
        pod.stop()
        server.close()


def test_a_new_signed_bundle_revision_takes_effect_after_polling_and_a_forged_one_never(
    cluster: Cluster, bundle_pod: BundlePod
) -> None:
    pod, server = bundle_pod.pod, bundle_pod.server
    assert not evaluate(cluster, "editor", PATIENT_NAME)
    started = {name: child.pid for name, child in pod.children.items()}
    build_bundle(POLICIES, bundle_pod.bundle, bundle_pod.key, ["metadata-editor", PATIENT_ROLE])
    eventually_sync(
        lambda: evaluate(cluster, "editor", PATIENT_NAME), within=30, until=bool, interval=0.5
    )

    # A revision signed by another key (revoking the role) is fetched, refused, never applied.
    forged = cluster.work / "forged.pem"
    signing_key(forged)
    build_bundle(POLICIES, bundle_pod.bundle, forged, [])
    fetched = len(server.served)
    eventually_sync(lambda: len(server.served), within=30, until=lambda n: n >= fetched + 2)
    assert evaluate(cluster, "editor", PATIENT_NAME), "the forged revision was applied"
    assert {n: c.pid for n, c in pod.children.items() if c.running()} == started
