"""A whole `imaging-proxy demo` run, start to shutdown: every line the proxy wrote is JSON
(botocore's, grpc's and OpenTelemetry's stdlib logging go through structlog; gRPC core's C
logging is quiet), and its audit trail is a file of its own beside the log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.processes import spawn, wait_for_json
from tests.e2e.conftest import collect, dev, kinds, study_update

pytestmark = pytest.mark.e2e


async def test_every_line_of_a_demo_runs_proxy_log_is_json(tmp_path: Path) -> None:
    ready_file, log_dir = tmp_path / "ready.json", tmp_path / "logs"
    argv = [
        sys.executable,
        "-m",
        "imaging_proxy_client.cli.main",
        "demo",
        "--port",
        "0",
        "--no-quotas",
    ]
    argv += ["--image-sets", "1", "--ready-file", str(ready_file), "--log-dir", str(log_dir)]
    # traces too, to stderr: the console exporter's spans are JSON lines like the logs
    config = tmp_path / "tracing.toml"
    config.write_text('[tracing]\nenabled = true\nexporter = "console"\n')
    argv += [f"--proxy-arg=--config={config}"]
    demo = spawn("demo", argv, tmp_path)
    try:
        ready = wait_for_json(ready_file, demo, timeout=120)
        image_set = ready["imageSetIds"][0]
        async with grpc.aio.insecure_channel(ready["endpoint"]) as channel:
            stub = pb_grpc.MetadataUpdateServiceStub(channel)
            update = study_update(ready["datastoreId"], image_set, "LOGS-ONLY-JSON")
            events = await collect(stub.UpdateImageSetMetadata(update, metadata=dev("demo-editor")))
            with pytest.raises(grpc.aio.AioRpcError):  # no identity: refused, logged, audited
                await collect(stub.UpdateImageSetMetadata(update))
        assert kinds(events)[-1] == "finished"
    finally:
        demo.stop(30)  # the demo stops the proxy first: its shutdown lines are in the log too
    lines = (log_dir / "proxy.log").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    assert all(isinstance(line, dict) for line in parsed)
    names = {line.get("event") or line.get("name") for line in parsed}
    assert {"serving", "stopped", "insecure_dev_identity"} <= names
    assert "Medical Imaging.UpdateImageSetMetadata" in names  # a span, from the console exporter
    assert any(line.get("logger") == "aiobotocore.credentials" for line in parsed)  # stdlib's
    audit = [json.loads(line) for line in (log_dir / "proxy.audit.jsonl").read_text().splitlines()]
    assert [r["event"] for r in audit] == ["decision", "submit", "finish", "refusal"]
