"""Each language adapter's held-out MLM loss against no adapter, from what training recorded.

    python scripts/mlm_dev_table.py stores/multisource [--md table.md]

Reads the store's manifest: ``metrics.dev_mlm`` (the full-vocabulary masked-LM loss and top-1 on the
language's 200 held-out training lines, with the adapter) and ``metrics.dev_mlm_no_adapter`` (the same
lines through the bare backbone), the best step and the training minutes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(store: Path) -> str:
    m = json.loads((store / "manifest.json").read_text())["adapters"]
    rows = ["| adapter | training lines | dev targets | loss, adapter | loss, none | Δ loss | top-1 adapter / none "
            "| best step | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in sorted(m.items()):
        mt = e.get("metrics") or {}
        if e["kind"] != "language" or "dev_mlm" not in mt:
            continue
        a, b = mt["dev_mlm"], mt["dev_mlm_no_adapter"]
        cfg = json.loads((store / e["path"] / "adapter_config.json").read_text())
        minutes = ((cfg.get("training") or {}).get("result") or {}).get("minutes")
        rows.append(f"| {name} | {mt.get('lines')} | {a['targets']} | {a['loss']:.2f} | {b['loss']:.2f} | "
                    f"{a['loss'] - b['loss']:+.2f} | {a['top1']:.1f} / {b['top1']:.1f} | {mt.get('best_step')} | {minutes} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    text = table(args.store)
    if args.md:
        args.md.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
