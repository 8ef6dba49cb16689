"""Markdown table of experiments/recovery/lr_sweep.sh: books validation perplexity after pruning + 8 CE steps, per lr.

    python experiments/recovery/lr_sweep.py runs/smollm2_lr
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from jaxprune.report import load_run  # noqa: E402  (standard library only: no JAX start-up)


def rows(root: Path) -> list[tuple[float, dict, dict]]:
    """(lr, dense record, pruned+fine-tuned record) per finished run under root, sorted by lr."""
    out = []
    for run in root.glob("lr_*"):
        if not (run / "results.jsonl").is_file():
            continue  # not started yet
        recs = {r["stage"]: r for r in load_run(run)}
        if "dense" in recs and "prune_1" in recs:
            lr = json.loads((run / "config.json").read_text())["config"]["finetune"]["lr"]
            out.append((float(lr), recs["dense"], recs["prune_1"]))
    return sorted(out, key=lambda t: t[0])


def ppl(record: dict) -> float:
    """Books validation perplexity of one results.jsonl record."""
    return record["metrics"]["heldout_ppl"]


def main(root: str) -> None:
    table = rows(Path(root))
    if not table:
        raise SystemExit(f"no finished runs under {root}")
    best = min(table, key=lambda t: ppl(t[2]))[0]
    print("| lr | books valid ppl | × dense | fine-tune tokens | stage wall s |")
    print("|---|---|---|---|---|")
    for lr, dense, pruned in table:
        mark = " **(best)**" if lr == best else ""
        print(f"| {lr:g}{mark} | {ppl(pruned):.2f} | {ppl(pruned) / ppl(dense):.3f} | {pruned['finetune_tokens']:,} | "
              f"{pruned['wall_time_s']:.0f} |")
    print(f"\ndense books valid ppl {ppl(table[0][1]):.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2_lr")
