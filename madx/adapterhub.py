"""Convert AdapterHub (`adapters` / legacy `adapter-transformers` v1) adapters to and from our format.

Only the MAD-X architecture is accepted: Pfeiffer/``seq_bn`` bottlenecks after the FFN output
(optionally with a NICE invertible adapter) and a one-layer tagging or QA head. Anything else is
refused with the offending setting named. Pickle weights (``pytorch_adapter.bin``) are read only
when the caller opts in (``allow_pickle=True``, the ``--allow-pickle`` flag of the CLI), and then
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .artifacts import ArtifactError, install_weights
from .config import AdapterConfig
from .model import MadxModel

LEGACY_RENAMES = {  # adapters.loading.WeightsLoader.legacy_weights_mapping
    "attention_text_task_adapters": "adapters",
    "attention_text_lang_adapters": "adapters",
    "layer_text_task_adapters": "adapters",
    "layer_text_lang_adapters": "adapters",
    "invertible_lang_adapters": "invertible_adapters",
}
# named configs of both library generations -> the settings that matter to us
NAMED_CONFIGS = {
    "pfeiffer": {"inv_adapter": None}, "seq_bn": {"inv_adapter": None},
    "pfeiffer+inv": {"inv_adapter": "nice"}, "seq_bn_inv": {"inv_adapter": "nice"},
}
REQUIRED = {  # setting -> value MAD-X (Pfeiffer placement) needs
    "original_ln_before": True, "original_ln_after": True, "residual_before_ln": True,
    "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False,
    "mh_adapter": False, "output_adapter": True, "is_parallel": False, "use_gating": False,
    "phm_layer": False, "scaling": 1.0,
}
BN_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.output\.adapters\.([^.]+)\.adapter_(down\.0|up)\.(weight|bias)$")
INV_KEY = re.compile(r"(?:^|\.)invertible_adapters\.([^.]+)\.([FG])\.([02])\.(weight|bias)$")
HEAD_KEY = re.compile(r"(?:^|\.)heads\.([^.]+)\.(\d+)\.(weight|bias)$")


def _read_tensors(d: Path, stem_safe: str, stem_bin: str, allow_pickle: bool) -> dict[str, torch.Tensor] | None:
    if (d / stem_safe).exists():
        return load_file(str(d / stem_safe))
    if (d / stem_bin).exists():
        if not allow_pickle:
            raise ArtifactError(
                f"{d / stem_bin} is a pickle file and is not loaded by default; if you trust it, convert it "
                f"once with `madx import-adapterhub {d} --allow-pickle ...`"
            )
        return torch.load(d / stem_bin, map_location="cpu", weights_only=True)
    return None


def _bn_settings(raw: Any, where: Path) -> dict[str, Any]:
    if isinstance(raw, str):
        if raw not in NAMED_CONFIGS:
            raise ArtifactError(f"{where}: adapter config {raw!r} is not a MAD-X config; supported: {sorted(NAMED_CONFIGS)}")
        # named configs: reduction factor comes from the tensor shapes
        return {**REQUIRED, "non_linearity": "relu", "leave_out": [],
                "inv_adapter_reduction_factor": 2, **NAMED_CONFIGS[raw]}
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: 'config' must be a name or an object, got {raw!r}")
    if raw.get("architecture") not in (None, "bottleneck"):
        raise ArtifactError(f"{where}: architecture {raw['architecture']!r} is not a bottleneck adapter")
    for key, want in REQUIRED.items():
        if key in raw and raw[key] != want:
            raise ArtifactError(
                f"{where}: {key}={raw[key]!r} is not the MAD-X (Pfeiffer) placement, which needs {key}={want!r}"
            )
    if raw.get("inv_adapter") not in (None, "nice"):
        raise ArtifactError(f"{where}: inv_adapter {raw['inv_adapter']!r} is not supported (only 'nice')")
    if isinstance(raw.get("reduction_factor"), dict):
        raise ArtifactError(f"{where}: per-layer reduction_factor {raw['reduction_factor']!r} is not supported")
    return raw


def import_adapterhub(model: MadxModel, src: str | Path, name: str | None = None, kind: str | None = None,
                      allow_pickle: bool = False) -> AdapterConfig:
    """Read an AdapterHub adapter directory and register it on ``model`` in our module layout."""
    d = Path(src)
    try:
        meta = json.loads((d / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{d}: missing adapter_config.json") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{d / 'adapter_config.json'}: invalid JSON ({e})") from None
    if "config" not in meta:
        raise ArtifactError(f"{d / 'adapter_config.json'}: no 'config' field; not an AdapterHub adapter")
    bn = _bn_settings(meta["config"], d / "adapter_config.json")
    hub_name = meta.get("name") or d.name
    if meta.get("hidden_size") not in (None, model.hidden_size):
        raise ArtifactError(
            f"{d}: adapter hidden_size {meta['hidden_size']} does not match the backbone's {model.hidden_size}"
        )
    tensors = _read_tensors(d, "adapter.safetensors", "pytorch_adapter.bin", allow_pickle)
    if tensors is None:
        raise ArtifactError(f"{d}: no adapter.safetensors (or pytorch_adapter.bin)")
    head_meta = json.loads((d / "head_config.json").read_text()) if (d / "head_config.json").exists() else None
    head_tensors = _read_tensors(d, "model_head.safetensors", "pytorch_model_head.bin", allow_pickle) if head_meta else None

    if kind is None:  # a head makes a task adapter; legacy v1 also stored "type": text_lang / text_task
        kind = "task" if head_meta or meta.get("type") == "text_task" else "language"
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        for old, new in LEGACY_RENAMES.items():
            k = k.replace(old, new)
        if m := BN_KEY.search(k):
            layer, _, part, wb = m.groups()
            out[f"layers.{layer}.{'down' if part == 'down.0' else 'up'}.{wb}"] = v
        elif m := INV_KEY.search(k):
            _, fg, idx, wb = m.groups()
            out[f"invertible.{fg}.{idx}.{wb}"] = v
        else:
            raise ArtifactError(f"{d}: unrecognised adapter tensor {k!r}")
    layers = sorted({int(k.split(".")[1]) for k in out if k.startswith("layers.")})
    if not layers:
        raise ArtifactError(f"{d}: no bottleneck tensors found")
    leave_out = tuple(sorted(set(range(model.num_layers)) - set(layers)))
    # named configs carry no reduction factor: derive it from the down-projection's shape
    rf = bn.get("reduction_factor") or model.hidden_size / out[f"layers.{layers[0]}.down.weight"].shape[0]
    act = str(bn.get("non_linearity", "relu")).lower()
    target = name or hub_name
    if kind == "language":
        if head_meta:
            raise ArtifactError(f"{d}: a language adapter cannot carry a head (found head_config.json)")
        has_inv = any(k.startswith("invertible.") for k in out)
        cfg = AdapterConfig.language(target, rf, invertible=has_inv,
                                     inv_reduction_factor=bn.get("inv_adapter_reduction_factor") or 2,
                                     leave_out=leave_out, non_linearity=act)
    else:
        out = {k: v for k, v in out.items() if not k.startswith("invertible.")}  # v1 task adapters carried unused inv
        if head_meta is None or head_tensors is None:
            raise ArtifactError(f"{d}: task adapter {hub_name!r} has no head (head_config.json + weights); "
                                "save it with its head (save_adapter(..., with_head=True))")
        hc = head_meta["config"]
        htype = {"tagging": "ner", "question_answering": "qa"}.get(hc.get("head_type"))
        if htype is None or hc.get("layers", 1) != 1:
            raise ArtifactError(f"{d}: head {hc.get('head_type')!r} with {hc.get('layers')} layers is not supported; "
                                "need a 1-layer tagging or question_answering head")
        labels: tuple[str, ...] = ()
        if htype == "ner":
            l2i = hc.get("label2id") or {f"LABEL_{i}": i for i in range(hc["num_labels"])}
            labels = tuple(lbl for lbl, _ in sorted(l2i.items(), key=lambda kv: kv[1]))
        for k, v in head_tensors.items():
            if m := HEAD_KEY.search(k):
                out[f"head.proj.{m.group(3)}"] = v
            else:
                raise ArtifactError(f"{d}: unrecognised head tensor {k!r}")
        cfg = AdapterConfig.task(target, htype, labels, rf, leave_out=leave_out, non_linearity=act)
    install_weights(model, cfg, out, where=str(d))
    return cfg


def export_adapterhub(model: MadxModel, name: str, dest: str | Path, model_class: str = "BertAdapterModel") -> Path:
    """Write a loaded adapter in AdapterHub's safetensors layout (loadable with ``load_adapter``)."""
    cfg = model._require(name)
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    prefix = {"BertAdapterModel": "bert.", "XLMRobertaAdapterModel": "roberta."}.get(model_class, "")
    tensors, head = {}, {}
    for k, v in model.adapters[name].state_dict().items():
        parts = k.split(".")
        if parts[0] == "layers":
            sub = "adapter_down.0" if parts[2] == "down" else "adapter_up"
            tensors[f"{prefix}encoder.layer.{parts[1]}.output.adapters.{name}.{sub}.{parts[3]}"] = v.contiguous()
        elif parts[0] == "invertible":
            tensors[f"{prefix}invertible_adapters.{name}.{'.'.join(parts[1:])}"] = v.contiguous()
        elif parts[0] == "head":
            head[f"heads.{name}.1.{parts[2]}"] = v.contiguous()
    bcfg = {**REQUIRED, "reduction_factor": cfg.bottleneck.reduction_factor,
            "non_linearity": cfg.bottleneck.non_linearity, "leave_out": list(cfg.bottleneck.leave_out),
            "inv_adapter": "nice" if cfg.invertible else None,
            "inv_adapter_reduction_factor": cfg.invertible.reduction_factor if cfg.invertible else None,
            "dropout": 0.0, "init_weights": "bert", "cross_adapter": False, "stochastic_depth": 0.0}
    common = {"hidden_size": model.hidden_size, "model_class": model_class,
              "model_name": model.backbone_name, "model_type": model.backbone.config.model_type,
              "name": name, "version": "adapters.1.3.0"}
    save_file(tensors, str(d / "adapter.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"config": bcfg, **common}, indent=2))
    if cfg.head is not None:
        hc = {"head_type": "tagging" if cfg.head.task_type == "ner" else "question_answering",
              "num_labels": cfg.head.num_outputs, "layers": 1, "activation_function": "tanh",
              "dropout_prob": None,
              "label2id": {lbl: i for i, lbl in enumerate(cfg.head.labels)} if cfg.head.task_type == "ner" else None}
        save_file(head, str(d / "model_head.safetensors"))
        (d / "head_config.json").write_text(json.dumps({"config": hc, **common}, indent=2))
    return d
