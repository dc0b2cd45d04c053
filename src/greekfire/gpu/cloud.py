"""Which cloud this machine runs on: DMI files first (no network), the metadata service only when enabled.

Detection follows cloud-init's DMI rules:

- AWS (EC2): ``/sys/hypervisor/uuid`` starts with ``ec2`` (Xen instances), or the DMI product UUID and
  product serial both start with ``ec2`` (Nitro instances).
- GCP (GCE): DMI product name ``Google Compute Engine`` or product serial starting with ``GoogleCloud-``.
- Azure: DMI chassis asset tag ``7783-7084-3265-9085-8269-3286-77``.

The DMI files are read under a root folder (``/`` in production) so tests can point at a temp folder of
fake files. With ``metadata=True`` the instance type, region and zone come from the metadata service
(IMDSv2 token flow on AWS) with a short timeout; any failure leaves them empty and adds a reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
DMI_DIR = Path("sys/class/dmi/id")
HYPERVISOR_UUID = Path("sys/hypervisor/uuid")

# the metadata services' own addresses (link-local; Google also answers on metadata.google.internal)
AWS_METADATA_URL = "http://169.254.169.254"
GCP_METADATA_URL = "http://metadata.google.internal"
AZURE_METADATA_URL = "http://169.254.169.254"
AZURE_API_VERSION = "2021-02-01"


@dataclass(slots=True)
class CloudInfo:
    """Where we run: ``provider`` is aws, gcp, azure or none; ``source`` is dmi, settings or default."""

    provider: str = "none"
    source: str = "default"
    instance_type: str | None = None
    region: str | None = None
    zone: str | None = None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def _read(root: Path, rel: Path) -> str:
    try:
        return (root / rel).read_text(errors="replace").strip()
    except OSError:  # absent on non-cloud machines and inside most containers
        return ""


def provider_from_dmi(dmi_root: str | Path = "/") -> str:
    """aws, gcp, azure or none, from the DMI files under ``dmi_root`` (no network)."""
    root = Path(dmi_root)
    dmi = {name: _read(root, DMI_DIR / name) for name in ("product_uuid", "product_serial", "product_name",
                                                          "chassis_asset_tag")}
    hypervisor_uuid = _read(root, HYPERVISOR_UUID).lower()
    if hypervisor_uuid.startswith("ec2"):
        return "aws"
    if dmi["product_uuid"].lower().startswith("ec2") and dmi["product_serial"].lower().startswith("ec2"):
        return "aws"
    if dmi["product_name"] == "Google Compute Engine" or dmi["product_serial"].startswith("GoogleCloud-"):
        return "gcp"
    if dmi["chassis_asset_tag"] == AZURE_ASSET_TAG:
        return "azure"
    return "none"


def _http(url: str, timeout_s: float, headers: dict[str, str], method: str = "GET") -> str:
    req = urllib.request.Request(url, headers=headers, method=method)
    # no proxies: the metadata service is link-local and a proxy would leak or break the request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout_s) as resp:
        return resp.read().decode("utf-8", "replace").strip()


def _aws_metadata(base: str, timeout_s: float, info: CloudInfo) -> None:
    token = _http(f"{base}/latest/api/token", timeout_s, {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT")
    hdr = {"X-aws-ec2-metadata-token": token}
    info.instance_type = _http(f"{base}/latest/meta-data/instance-type", timeout_s, hdr)
    info.zone = _http(f"{base}/latest/meta-data/placement/availability-zone", timeout_s, hdr)
    info.region = _http(f"{base}/latest/meta-data/placement/region", timeout_s, hdr)


def _gcp_metadata(base: str, timeout_s: float, info: CloudInfo) -> None:
    hdr = {"Metadata-Flavor": "Google"}
    # both come back as resource paths: projects/123/machineTypes/a2-highgpu-1g, projects/123/zones/us-central1-a
    machine = _http(f"{base}/computeMetadata/v1/instance/machine-type", timeout_s, hdr)
    zone = _http(f"{base}/computeMetadata/v1/instance/zone", timeout_s, hdr)
    info.instance_type = machine.rsplit("/", 1)[-1] or None
    info.zone = zone.rsplit("/", 1)[-1] or None
    info.region = info.zone.rsplit("-", 1)[0] if info.zone and "-" in info.zone else None


def _azure_metadata(base: str, timeout_s: float, info: CloudInfo) -> None:
    body = _http(f"{base}/metadata/instance/compute?api-version={AZURE_API_VERSION}", timeout_s, {"Metadata": "true"})
    compute = json.loads(body)
    info.instance_type = compute.get("vmSize") or None
    info.region = compute.get("location") or None
    info.zone = compute.get("zone") or None


_FETCHERS = {"aws": (_aws_metadata, AWS_METADATA_URL), "gcp": (_gcp_metadata, GCP_METADATA_URL),
             "azure": (_azure_metadata, AZURE_METADATA_URL)}


def detect_cloud(
    override: str = "auto",
    *,
    dmi_root: str | Path = "/",
    metadata: bool = False,
    metadata_url: str | None = None,
    timeout_s: float = 1.0,
) -> CloudInfo:
    """Detect the cloud provider; never raises.

    ``override`` (settings ``gpu.cloud``) wins unless it is ``auto``. With ``metadata`` the metadata
    service at ``metadata_url`` (default: the provider's own address) is asked for instance type, region
    and zone, each request timing out after ``timeout_s`` seconds.
    """
    if override != "auto":
        info = CloudInfo(provider=override, source="settings")
    else:
        info = CloudInfo(provider=provider_from_dmi(dmi_root), source="dmi")
    if metadata and info.provider in _FETCHERS:
        fetch, default_url = _FETCHERS[info.provider]
        base = (metadata_url or default_url).rstrip("/")
        try:
            fetch(base, timeout_s, info)
        except (OSError, urllib.error.URLError, ValueError, TimeoutError) as exc:
            info.reasons.append(f"{info.provider} metadata service at {base} did not answer: {exc}")
    return info
