#!/usr/bin/env bash
# A local multi-node Ray cluster on this machine (head + one worker raylet, both 127.0.0.1), with
# madx-serve deployed so that backbone replicas are spread across the nodes (max_replicas_per_node=1).
#   deploy/local_cluster.sh up      # start both nodes and deploy (prints the URL)
#   deploy/local_cluster.sh status  # nodes and Serve status
#   deploy/local_cluster.sh down    # stop everything
set -euo pipefail
export RAY_AUTH_MODE=disabled
PORT=${MADX_PORT:-8000}
GCS=${RAY_GCS_PORT:-6390}
RAY=${RAY:-ray}
SERVE=${SERVE:-serve}
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-up}" in
  up)
    $RAY start --head --node-ip-address 127.0.0.1 --port "$GCS" --num-cpus 1 --include-dashboard false \
      --disable-usage-stats --resources '{"node_head": 1}' > /dev/null
    $RAY start --address "127.0.0.1:$GCS" --node-ip-address 127.0.0.1 --num-cpus 1 \
      --resources '{"node_worker": 1}' --disable-usage-stats > /dev/null
    echo "nodes: $(python -c "import ray; ray.init(address='127.0.0.1:$GCS', log_to_driver=False); print(len([n for n in ray.nodes() if n['Alive']]))")"
    # the same Serve config as production, with two fixed backbone replicas, one per node
    python - "$HERE/serve.yaml" "$PORT" > /tmp/madx-local-cluster.yaml <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["http_options"].update(host="127.0.0.1", port=int(sys.argv[2]))
app = cfg["applications"][0]
app["args"]["max_replicas_per_node"] = 1
for d in app["deployments"]:
    if d["name"] == "Backbone":
        d.pop("autoscaling_config", None)
        d.pop("num_replicas", None)
        d["num_replicas"] = 2
        d["max_replicas_per_node"] = 1
print(yaml.safe_dump(cfg, sort_keys=False))
PY
    RAY_ADDRESS="127.0.0.1:$GCS" $SERVE deploy /tmp/madx-local-cluster.yaml --address "http://127.0.0.1:8265" 2>/dev/null \
      || RAY_ADDRESS="127.0.0.1:$GCS" python -c "
import yaml, ray
from ray import serve
from serving.deployments import app_builder
cfg = yaml.safe_load(open('/tmp/madx-local-cluster.yaml'))
ray.init(address='127.0.0.1:$GCS', log_to_driver=False)
serve.start(detached=True, http_options=cfg['http_options'])
app = cfg['applications'][0]
serve.run(app_builder(app['args']), name='madx', route_prefix='/', blocking=False)
"
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
