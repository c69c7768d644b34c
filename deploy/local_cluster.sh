#!/usr/bin/env bash
# A local multi-node Ray cluster on this machine (head + one worker raylet, both 127.0.0.1), with
# madx-serve deployed so that backbone replicas are spread across the nodes (max_replicas_per_node=1).
#   deploy/local_cluster.sh up      # start both nodes, deploy, wait for /readyz (prints the URL)
#   deploy/local_cluster.sh status  # nodes and Serve status
#   deploy/local_cluster.sh down    # stop everything
# Environment: MADX_PORT (8000), RAY_GCS_PORT (6390), MADX_NODE_CPUS (2 per node), RAY, PYTHON.
set -euo pipefail
export RAY_AUTH_MODE=token  # the head makes ~/.ray/auth_token; the worker and clients on this machine read it
PORT=${MADX_PORT:-8000}
GCS=${RAY_GCS_PORT:-6390}
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python}
CPUS=${MADX_NODE_CPUS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-up}" in
  up)
    $RAY start --head --node-ip-address 127.0.0.1 --port "$GCS" --num-cpus "$CPUS" --include-dashboard false \
      --disable-usage-stats > /dev/null
    $RAY start --address "127.0.0.1:$GCS" --node-ip-address 127.0.0.1 --num-cpus "$CPUS" \
      --disable-usage-stats > /dev/null
    # The production Serve config's settings (deploy/serve.yaml `args`) with two fixed backbone replicas,
    # one per node. Deployed through the Serve API: `serve deploy` needs the dashboard, which is off.
    RAY_ADDRESS="127.0.0.1:$GCS" $PYTHON - "$HERE/serve.yaml" "$PORT" "$CPUS" <<'PY'
import sys, time
import httpx, ray, yaml
from ray import serve
from serving.deployments import build
from serving.settings import load_settings

cfg = yaml.safe_load(open(sys.argv[1]))
port, cpus = int(sys.argv[2]), float(sys.argv[3])
args = dict(cfg["applications"][0]["args"])
args.update(port=port, backbone_replicas=2, max_replicas_per_node=1, backbone_num_cpus=cpus)
args.pop("autoscaling", None)
settings = load_settings(**args)
ray.init(address="auto", log_to_driver=False)
print("nodes alive:", sum(n["Alive"] for n in ray.nodes()))
serve.start(detached=True, http_options={"host": "127.0.0.1", "port": port, "location": "EveryNode"})
serve.run(build(settings), name="madx", route_prefix="/", blocking=False)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(1)
else:
    sys.exit("madx-serve did not become ready in 300 s; see /tmp/ray/session_latest/logs/serve/")
PY
    echo "madx-serve on http://127.0.0.1:$PORT (2 nodes)"
    ;;
  status)
    $RAY status --address "127.0.0.1:$GCS" || true
    ;;
  down)
    $RAY stop --force > /dev/null && echo stopped
    ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
