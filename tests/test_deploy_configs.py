"""deploy/: Serve configs, the KubeRay manifest and the Dockerfile parse and validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.deployments import Backbone, Control, Ingress
from serving.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DEPLOYMENTS = {Backbone.name, Ingress.name, Control.name}


def _check_serve_config(cfg: dict) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(cfg)  # Ray's own schema for `serve deploy`
    (app,) = schema.applications
    assert app.import_path == "serving.deployments:app_builder"
    load_settings(env={}, **app.args)  # the app args are valid server settings
    assert app.args["topology"] == "two_hop"  # these configs name the two-hop deployments (Ingress, Backbone)
    names = {d.name for d in app.deployments}
    assert names == DEPLOYMENTS, f"deployment names must match the code: {names} vs {DEPLOYMENTS}"
    ing = next(d for d in app.deployments if d.name == "Ingress")
    assert ing.max_ongoing_requests >= 1024  # the default of 5 caps throughput
    assert cfg["logging_config"]["enable_access_log"] is False
    return schema


@pytest.mark.parametrize("name, gpus", [("serve.yaml", 0), ("serve-gpu.yaml", 1)])
def test_serve_configs(name, gpus):
    schema = _check_serve_config(yaml.safe_load((DEPLOY / name).read_text()))
    bb = next(d for d in schema.applications[0].deployments if d.name == "Backbone")
    auto = bb.autoscaling_config
    assert 1 <= auto["min_replicas"] < auto["max_replicas"] and auto["target_ongoing_requests"] > 0
    assert (bb.ray_actor_options.num_gpus or 0) == gpus


def test_kuberay_rayservice_manifest():
    m = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayService")
    spec = m["spec"]
    _check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    rc = spec["rayClusterConfig"]
    assert rc["rayVersion"].startswith("2.60")
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(p["containerPort"] == 8000 for p in head["ports"])
    for grp in rc["workerGroupSpecs"]:
        assert grp["minReplicas"] <= grp["replicas"] <= grp["maxReplicas"]
        c = grp["template"]["spec"]["containers"][0]
        assert c["image"] == head["image"] and c["resources"]["limits"]["memory"]
        # the API key comes from a Secret, never inline
        assert all("value" not in e for e in c.get("env", []) if e["name"] == "MADX_API_KEY")


def test_the_ray_control_plane_is_authenticated_and_fenced():
    """Token auth everywhere, and a NetworkPolicy in front of the control plane."""
    m = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    rc = m["spec"]["rayClusterConfig"]
    assert rc["authOptions"] == {"mode": "token"}
    label = {"ray.io/cluster-name-prefix": "madx-serve"}
    pods = [rc["headGroupSpec"]["template"], *(g["template"] for g in rc["workerGroupSpecs"])]
    assert all(p["metadata"]["labels"] == label for p in pods)
    np_ = yaml.safe_load((DEPLOY / "kuberay" / "networkpolicy.yaml").read_text())
    assert (np_["kind"], np_["spec"]["podSelector"]["matchLabels"]) == ("NetworkPolicy", label)
    open_rules = [r for r in np_["spec"]["ingress"] if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [8000]  # only the HTTP API is open
    fenced = [r for r in np_["spec"]["ingress"] if "from" in r]
    assert fenced and all("ports" not in r for r in fenced)  # the rest only from this cluster and the operator
    assert "RAY_AUTH_MODE=token" in (DEPLOY / "Dockerfile").read_text()
    assert "RAY_AUTH_MODE=token" in (DEPLOY / "local_cluster.sh").read_text()
    for f in [*DEPLOY.rglob("*"), Path(__file__).parents[1] / "serving" / "main.py"]:
        if f.is_file():
            assert "RAY_AUTH_MODE=disabled" not in f.read_text() and '"disabled")' not in f.read_text(), f


def test_dockerfile_pins_torch_and_prepares_the_backbone():
    text = (DEPLOY / "Dockerfile").read_text()
    assert '"torch==2.13.0"' in text and "madx prepare-backbone" in text and "USER 1000" in text
