"""Cloud detection from fake DMI files, and the metadata flows against a loopback metadata imitation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from greekfire.gpu.cloud import AZURE_ASSET_TAG, detect_cloud, provider_from_dmi

TOKEN = "AQAEAFake-token=="


def dmi(root: Path, **files: str) -> Path:
    for name, value in files.items():
        rel = Path("sys/hypervisor/uuid") if name == "hypervisor_uuid" else Path("sys/class/dmi/id") / name
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value + "\n")
    return root


@pytest.mark.parametrize(
    ("files", "provider"),
    [
        ({"hypervisor_uuid": "ec2e1916-9099-7caf-fd21-012345abcdef"}, "aws"),
        ({"product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF", "product_serial": "ec2e1916-9099-7caf"}, "aws"),
        ({"product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF", "product_serial": "Not Specified"}, "none"),
        ({"product_name": "Google Compute Engine"}, "gcp"),
        ({"product_serial": "GoogleCloud-8F3C2D1E0B9A"}, "gcp"),
        ({"chassis_asset_tag": AZURE_ASSET_TAG, "product_name": "Virtual Machine"}, "azure"),
        ({"chassis_asset_tag": "No Asset Tag", "product_name": "KVM"}, "none"),
        ({}, "none"),
    ],
)
def test_provider_from_dmi(tmp_path: Path, files: dict[str, str], provider: str) -> None:
    assert provider_from_dmi(dmi(tmp_path, **files)) == provider


def test_override_beats_dmi(tmp_path: Path) -> None:
    root = dmi(tmp_path, product_name="Google Compute Engine")
    info = detect_cloud("azure", dmi_root=root)
    assert (info.provider, info.source) == ("azure", "settings")
    assert detect_cloud("auto", dmi_root=root).source == "dmi"


class MetadataImitation(BaseHTTPRequestHandler):
    """Answers like IMDSv2 (token required), the GCE metadata server and Azure IMDS (headers required)."""

    seen: list[str] = []

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        return

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, TOKEN)
        else:
            self._send(400, "bad token request")

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        aws = {"/latest/meta-data/instance-type": "p5.48xlarge",
               "/latest/meta-data/placement/region": "us-east-1",
               "/latest/meta-data/placement/availability-zone": "us-east-1a"}
        gcp = {"/computeMetadata/v1/instance/machine-type": "projects/123456/machineTypes/a3-highgpu-8g",
               "/computeMetadata/v1/instance/zone": "projects/123456/zones/us-central1-a"}
        if self.path in aws:
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                return self._send(401, "Unauthorized")  # IMDSv2 rejects requests without the session token
            return self._send(200, aws[self.path])
        if self.path in gcp:
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header")
            return self._send(200, gcp[self.path])
        if self.path.startswith("/metadata/instance/compute?api-version="):
            if self.headers.get("Metadata") != "true":
                return self._send(400, '{"error": "Bad request. Required metadata header not specified"}')
            return self._send(200, json.dumps({"vmSize": "Standard_ND96isr_H100_v5", "location": "eastus",
                                               "zone": "2"}), "application/json")
        self._send(404, "not found")


@pytest.fixture
def metadata_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetadataImitation)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    MetadataImitation.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_aws_imdsv2_token_flow(tmp_path: Path, metadata_url: str) -> None:
    root = dmi(tmp_path, hypervisor_uuid="ec2aaaaa-bbbb")
    info = detect_cloud("auto", dmi_root=root, metadata=True, metadata_url=metadata_url, timeout_s=1.0)
    assert (info.provider, info.instance_type, info.region, info.zone) == ("aws", "p5.48xlarge", "us-east-1", "us-east-1a")
    assert MetadataImitation.seen[0] == "PUT /latest/api/token" and not info.reasons


def test_gcp_metadata(tmp_path: Path, metadata_url: str) -> None:
    root = dmi(tmp_path, product_name="Google Compute Engine")
    info = detect_cloud("auto", dmi_root=root, metadata=True, metadata_url=metadata_url)
    assert (info.provider, info.instance_type, info.region, info.zone) == ("gcp", "a3-highgpu-8g", "us-central1",
                                                                           "us-central1-a")


def test_azure_metadata(tmp_path: Path, metadata_url: str) -> None:
    root = dmi(tmp_path, chassis_asset_tag=AZURE_ASSET_TAG)
    info = detect_cloud("auto", dmi_root=root, metadata=True, metadata_url=metadata_url)
    assert (info.provider, info.instance_type, info.region, info.zone) == ("azure", "Standard_ND96isr_H100_v5",
                                                                           "eastus", "2")


def test_metadata_off_by_default_and_failure_is_a_reason(tmp_path: Path, metadata_url: str) -> None:
    root = dmi(tmp_path, hypervisor_uuid="ec2aaaaa")
    info = detect_cloud("auto", dmi_root=root, metadata_url=metadata_url)
    assert info.provider == "aws" and info.instance_type is None and MetadataImitation.seen == []
    # a port nobody listens on: no exception, a reason that names the address
    dead = metadata_url.rsplit(":", 1)[0] + ":9"
    info = detect_cloud("auto", dmi_root=root, metadata=True, metadata_url=dead, timeout_s=0.5)
    assert info.instance_type is None and info.reasons and dead in info.reasons[0]
