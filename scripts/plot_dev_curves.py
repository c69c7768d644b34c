"""Plot the dev curves (and training loss) that task-adapter training recorded in a store.

    python scripts/plot_dev_curves.py stores/multisource ner-madx-s0 --out docs/dev_curves.png

Needs matplotlib (``pip install -e '.[docs]'``). Reads each adapter's ``metrics.dev_curve`` and the
loss curve from its artifact's training record; draws nothing it did not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("docs/dev_curves.png"))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = json.loads((args.store / "manifest.json").read_text())["adapters"]
    fig, axes = plt.subplots(1, len(args.adapters), figsize=(5.5 * len(args.adapters), 3.8), squeeze=False)
    for ax, name in zip(axes[0], args.adapters, strict=True):
        e = manifest[name]
        m = e["metrics"]
        meta = json.loads((args.store / e["path"] / "adapter_config.json").read_text())
        loss = meta.get("training", {}).get("result", {}).get("loss_curve", [])
        dev = m.get("dev_curve") or []
        if not dev:
            raise SystemExit(f"{name}: no dev_curve in the store (trained without a dev set?)")
        ax.plot([s for s, _ in dev], [v for _, v in dev], "o-", color="tab:blue", label=f"dev {m['dev']['metric']}")
        ax.axvline(m["best_step"], color="tab:blue", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(m["dev"]["metric"], color="tab:blue")
        ax.set_title(f"{name}: best dev {m['dev_score']:.1f} at step {m['best_step']} ({m['epochs']} epochs)")
        if loss:
            ax2 = ax.twinx()
            ax2.plot([s for s, _ in loss], [v for _, v in loss], color="tab:gray", alpha=0.5, lw=1, label="train loss")
            ax2.set_ylabel("train loss (mean of 10 steps)", color="tab:gray")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
