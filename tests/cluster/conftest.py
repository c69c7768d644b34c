"""One local 2-node Ray cluster (head + worker raylet on 127.0.0.1) with the Serve app, shared by every
test in this folder (about 40 s to start). Backbone replicas are spread one per node."""

from __future__ import annotations

import os
import secrets
import socket
import time

import httpx
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "token")  # token auth, as madx-serve runs
# ray.init makes ~/.ray/auth_token on a local start, but a ray.cluster_utils.Cluster does not: on a
# fresh machine its GCS would find no token and abort. A token for this test session, in the
# environment every Ray process of the cluster inherits (the user's own token file is left alone).
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def replica_series(served, metric: str = "madx_replica_info") -> list[dict[str, str]]:
    """Label sets of one metric's series in /metrics (one per live backbone replica for replica_info)."""
    text = httpx.get(f"{served['url']}/metrics", headers=served["headers"]).text
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            out.append({k: v.strip('"') for k, v in labels.items()})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serving.deployments import build
    from serving.settings import load_settings

    from ..serving.tiny_store import BACKBONE, make_store

    store = make_store(tmp_path_factory.mktemp("cluster-store"))
    port = free_port()
    key = "cluster-test-key"
    settings = load_settings(env={}, backbone=BACKBONE, adapter_store=str(store), port=port, api_key=key,
                             batching={"max_wait_ms": 20}, backbone_replicas=2, max_replicas_per_node=1,
                             topology="two_hop",  # (test_single_topology.py deploys the other beside it)
                             limits={"read_timeout_s": 3})  # short, so that a trickled body's 408 is quick to test
    dash = free_port()  # the dashboard is on, so that its token authentication is tested
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_port": dash})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(settings), name="madx", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", headers={"X-API-Key": key}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    yield {"url": url, "headers": {"X-API-Key": key}, "store": store, "backbone": BACKBONE,
           "nodes": [n["NodeID"] for n in ray.nodes()], "dashboard": f"http://127.0.0.1:{dash}"}
    ray.shutdown()
    cluster.shutdown()
