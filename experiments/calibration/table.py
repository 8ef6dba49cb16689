"""Markdown table of calibration runs: dense, each pruned model before and after fine-tuning, the control.

    python experiments/calibration/table.py runs/smollm2_calibft_*            # SmolLM2, one run per method
    python experiments/calibration/table.py runs/calib_* runs/calibft_*       # the book GPT

A run's metrics are those of its results.jsonl rows (with `metrics_before_finetune` where the
run evaluated before fine-tuning) merged with RUN/test_sets/eval/evaluations.jsonl (tasks
evaluated later from the checkpoints with `python -m jaxprune.evaluate`). Every number is
read from those files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("heldout_ppl", "books valid ppl"), ("wikitext2_ppl", "WikiText-2 test ppl"),
           ("books_test_ppl", "books test ppl"), ("lambada_acc", "LAMBADA acc"), ("lambada_ppl", "LAMBADA ppl"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def run_rows(run: Path) -> list[tuple[str, str, dict, dict]]:
    """(label, what, row, metrics) for each evaluated model of one run."""
    cfg = json.loads((run / "config.json").read_text())["config"]
    pr = cfg["pruning"]
    pattern = f"{pr['n']}:{pr['m']}" if pr["pattern"] == "nm" else f"{max(pr['rates']):.0%} {pr['pattern']}"
    extra = {r["stage"]: r["metrics"] for r in _rows(run / "test_sets" / "eval" / "evaluations.jsonl")}
    out = []
    for r in _rows(run / "results.jsonl"):
        m = dict(r["metrics"], **extra.get(r["stage"], {}))
        if r["kind"] == "dense":
            out.append(("dense", "—", r, m))
        elif r["kind"] == "control":
            out.append(("dense + fine-tune (control)", f"{r['finetune_steps']} steps", r, m))
        else:
            label = f"{pr['method']} {pattern}"
            if "metrics_before_finetune" in r:
                out.append((label, "no fine-tune", r, r["metrics_before_finetune"]))
            out.append((label, f"+ {r['finetune_steps']} steps" if r["finetune_steps"] else "no fine-tune", r, m))
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def table(runs: list[Path]) -> str:
    lines = ["| model | fine-tuning | sparsity | " + " | ".join(h for _, h in COLUMNS) + " | prune s |",
             "|" + "---|" * (len(COLUMNS) + 4)]
    seen = set()
    for run in runs:
        for label, what, r, m in run_rows(run):
            key = (label, what)
            if key in seen:  # the dense model (and a shared control) appear in several runs
                continue
            seen.add(key)
            cells = [label, what, f"{r['sparsity']:.4f}"] + [_fmt(m.get(k)) for k, _ in COLUMNS]
            cells.append(_fmt(r.get("prune_seconds")) if what == "no fine-tune" else "")  # one prune per model
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(table([Path(p) for p in sys.argv[1:]]), end="")
