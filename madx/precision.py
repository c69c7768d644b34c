"""Backbone precision: the frozen encoder in fp32, bf16, fp16 (CUDA only) or int8.

Only the backbone changes; adapters keep their own dtype (``adapter_dtype``, fp32 by default) and
``MadxModel`` casts at each adapter's input and output, so an adapter computes exactly what it
computes on an fp32 backbone, given the same input.

- ``bf16`` / ``fp16``: every backbone weight cast (embeddings, attention, FFN, LayerNorm); the
  residual stream runs in that dtype. On CPUs with AVX512-BF16 or AMX, oneDNN runs bf16 matmuls
  natively; elsewhere bf16 is emulated and slow, which is why ``auto`` checks for it.
- ``int8``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (per-row int8 weights, per-token
  dynamic int8 activations) on the encoder's Linear layers; embeddings and LayerNorms stay fp32.
  torchao's eager ``quantize_`` is the API torch 2.13 points to (``torch.ao.quantization`` is
  deprecated). Its per-tensor activation variant, like ``torch.ao``'s ``quantize_dynamic``, is
  faster but loses accuracy on e5's outlier features (docs/BENCHMARKS.md has the numbers).
"""

from __future__ import annotations

import logging

import torch

BACKBONE_DTYPES = ("fp32", "bf16", "fp16", "int8")
FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 instructions for int8 dot products


def cpu_has_fast_int8() -> bool | None:
    """True where the CPU has int8 dot-product instructions (VNNI or AMX-INT8), False on an x86 CPU
    without them, None where this cannot be told (not x86, or no /proc/cpuinfo)."""
    flags = cpu_flags()
    if not flags or "sse2" not in flags:  # not a readable x86 CPU
        return None
    return any(f in flags for f in INT8_FLAGS)


def slow_precision(name: str, device: torch.device | str) -> str | None:
    """Why backbone precision ``name`` would run slower than fp32 on this CPU, in one line; None
    where it is fast (or on a GPU, or where the CPU cannot be told). Measured: int8 10-12 s against
    fp32's 0.5 s per 64-sentence request on an AVX2-only AMD EPYC (1.6x faster than fp32 with
    AVX512-VNNI); bf16 without AVX512-BF16 or AMX is emulated."""
    if torch.device(device).type != "cpu":
        return None
    if name == "bf16" and not cpu_has_fast_bf16():
        return ("backbone_dtype 'bf16' would be slower than fp32 on this CPU (no AVX512-BF16 or AMX: bf16 "
                "matmuls are emulated); use 'auto' or 'fp32'")
    if name == "int8" and cpu_has_fast_int8() is False:
        return ("backbone_dtype 'int8' would be slower than fp32 on this CPU (no AVX512-VNNI, AVX-VNNI or "
                "AMX-INT8: int8 matmuls take slow fallback kernels, 20x slower than fp32 on an AVX2-only "
                "EPYC); use 'auto' or 'fp32'")
    return None


def resolve_backbone_dtype(name: str, device: torch.device | str) -> str:
    """``auto`` -> bf16 on a GPU that supports it (else fp16), bf16 on a CPU with native bf16
    matmuls, else fp32. Explicit names are checked against the device."""
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if name not in BACKBONE_DTYPES:
        raise ValueError(f"backbone_dtype {name!r} is unknown; use auto or one of {BACKBONE_DTYPES}")
    if name == "fp16" and kind != "cuda":
        raise ValueError("backbone_dtype 'fp16' needs a CUDA device (CPU matmuls in fp16 are emulated); "
                         "use 'bf16' or 'int8' on CPU")
    if name == "int8" and kind != "cpu":
        raise ValueError(f"backbone_dtype 'int8' is the CPU path (device {kind!r}); use 'bf16' or 'fp16' on a GPU")
    return name


class _TorchaoNotices(logging.Filter):
    """Drops two start-up notices that are not errors here, nothing else: a CPU wheel of torchao
    cannot load its CUDA-only extension libraries, and torch's pytree says registering Enum types
    (which torchao does at import) is deprecated. transformers imports torchao whenever it is
    installed, so every process that builds a backbone would print them. Also torchao's note that
    Triton (a GPU compiler) is absent, which the CPU int8 path does not use."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("is an Enum subclass and is now natively supported" in msg
                    or (msg.startswith("Failed to load") and "/torchao/_C" in msg)
                    or "Detected no triton" in msg)


_NOTICES = _TorchaoNotices()


def quiet_torchao_notices() -> None:
    for name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):  # (a logger's filter sees
        # only its own records, not its children's)
        logger = logging.getLogger(name)
        if _NOTICES not in logger.filters:
            logger.addFilter(_NOTICES)


def quantize_int8(module: torch.nn.Module) -> None:
    """Per-row int8 weights and per-token dynamic int8 activations on every Linear of ``module``."""
    quiet_torchao_notices()
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("backbone_dtype 'int8' needs torchao (pip install torchao)") from e
    quantize_(module, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))


def set_backbone_dtype(model, name: str, adapter_dtype: torch.dtype | str = torch.float32) -> str:
    """Convert ``model.backbone`` (a MadxModel's, before any adapter is added) in place; returns the
    name used. ``adapter_dtype``, the dtype adapters are created in from now on: a torch dtype,
    ``"fp32"``, or ``"backbone"`` (the resolved backbone's float dtype; fp32 for int8)."""
    if model.adapters:
        raise ValueError("set the backbone dtype before adding adapters "
                         f"(loaded: {sorted(model.configs)})")
    device = next(model.backbone.parameters()).device
    name = resolve_backbone_dtype(name, device)
    if name in FLOAT:
        model.backbone.to(FLOAT[name])
    else:  # int8: the encoder's Linear layers only (embeddings and LayerNorms stay fp32)
        quantize_int8(model.backbone.encoder)
    if isinstance(adapter_dtype, str):
        if adapter_dtype not in ("fp32", "backbone"):
            raise ValueError(f"adapter_dtype {adapter_dtype!r} is unknown; use 'fp32' or 'backbone'")
        adapter_dtype = FLOAT.get(name, torch.float32) if adapter_dtype == "backbone" else torch.float32
    model.adapter_dtype = adapter_dtype
    model.backbone_dtype = name
    return name
