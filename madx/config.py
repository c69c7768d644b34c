"""Frozen configuration values for adapters and heads (no torch, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

ACTIVATIONS = ("relu", "gelu", "tanh", "swish", "silu")
ADAPTER_KINDS = ("language", "task")
TASK_TYPES = ("ner", "qa")


@dataclass(frozen=True)
class BottleneckConfig:
    """Pfeiffer (``seq_bn``) bottleneck adapter after every layer's FFN output.

    ``reduction_factor`` divides the hidden size: language adapters use 2, task adapters 16
    (MAD-X defaults). ``leave_out`` lists layer indices that get no adapter.
    """

    reduction_factor: float = 16
    non_linearity: str = "relu"
    leave_out: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.reduction_factor > 0:
            raise ValueError(f"reduction_factor {self.reduction_factor!r} must be > 0")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(
                f"non_linearity {self.non_linearity!r} is not supported; use one of {ACTIVATIONS}"
            )
        object.__setattr__(self, "leave_out", tuple(sorted(int(i) for i in self.leave_out)))

    def bottleneck_size(self, hidden_size: int) -> int:
        # AdapterHub: int(hidden // rf), at least 1
        return max(1, int(hidden_size // self.reduction_factor))


@dataclass(frozen=True)
class InvertibleConfig:
    """NICE coupling block on the embedding output (language adapters only)."""

    reduction_factor: float = 2
    non_linearity: str = "relu"

    def __post_init__(self) -> None:
        if not self.reduction_factor > 0:
            raise ValueError(f"inv reduction_factor {self.reduction_factor!r} must be > 0")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(
                f"inv non_linearity {self.non_linearity!r} is not supported; use one of {ACTIVATIONS}"
            )


@dataclass(frozen=True)
class HeadConfig:
    """Prediction head of a task adapter: token classification (NER) or extractive QA."""

    task_type: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type {self.task_type!r} is unknown; use one of {TASK_TYPES}")
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.task_type == "ner" and len(self.labels) < 2:
            raise ValueError(f"an NER head needs at least 2 labels, got {list(self.labels)}")
        if self.task_type == "qa" and self.labels not in ((), ("start", "end")):
            raise ValueError(f"a QA head has the fixed outputs start/end, got {list(self.labels)}")

    @property
    def num_outputs(self) -> int:
        return 2 if self.task_type == "qa" else len(self.labels)


@dataclass(frozen=True)
class AdapterConfig:
    """Everything needed to rebuild one adapter's modules, independent of its weights."""

    name: str
    kind: str
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    invertible: InvertibleConfig | None = None
    head: HeadConfig | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ \t\n"):
            raise ValueError(f"adapter name {self.name!r} must be non-empty with no spaces or slashes")
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind {self.kind!r} is unknown; use one of {ADAPTER_KINDS}")
        if self.kind == "task" and self.head is None:
            raise ValueError(f"task adapter {self.name!r} needs a head (ner or qa)")
        if self.kind == "language" and self.head is not None:
            raise ValueError(f"language adapter {self.name!r} cannot carry a task head")

    @classmethod
    def language(cls, name: str, reduction_factor: float = 2, invertible: bool = True,
                 inv_reduction_factor: float = 2, leave_out: tuple[int, ...] = (),
                 non_linearity: str = "relu") -> AdapterConfig:
        return cls(
            name=name,
            kind="language",
            bottleneck=BottleneckConfig(reduction_factor, non_linearity, leave_out),
            invertible=InvertibleConfig(inv_reduction_factor, non_linearity) if invertible else None,
        )

    @classmethod
    def task(cls, name: str, task_type: str, labels: tuple[str, ...] = (),
             reduction_factor: float = 16, leave_out: tuple[int, ...] = (),
             non_linearity: str = "relu") -> AdapterConfig:
        labels = ("start", "end") if task_type == "qa" and not labels else labels
        return cls(
            name=name,
            kind="task",
            bottleneck=BottleneckConfig(reduction_factor, non_linearity, leave_out),
            head=HeadConfig(task_type, labels),
        )


@dataclass(frozen=True)
class AdapterStack:
    """The (language, task) stack of one request row. Immutable, hashable, passed per row.

    Either part may be missing: ``AdapterStack(None, "ner")`` is the task-adapter-only
    baseline, ``AdapterStack("sw", None)`` a language adapter alone (e.g. for MLM).
    """

    language: str | None = None
    task: str | None = None

    @property
    def adapters(self) -> tuple[str, ...]:
        """Adapter names in application order (language first, as in ``Stack(lang, task)``)."""
        return tuple(a for a in (self.language, self.task) if a is not None)

    def __str__(self) -> str:
        return f"{self.language or '-'}+{self.task or '-'}"
