"""Tables and plots from one or more runs' results.jsonl.

    python -m jaxprune.report WORKDIR [WORKDIR ...] [--out DIR]

Writes report.md, results.csv and PNG plots (each metric against sparsity, one line
per run; per-layer sparsity of each run's sparsest model) into the first WORKDIR or
--out. Each pruned row is shown against the original dense model and against its
control: the dense model fine-tuned for the same number of steps on the same batches.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

# Lower is better for these; higher for everything else (accuracies, exact match).
LOWER_IS_BETTER = ("loss", "ppl")
SKIP = ("_n", "_tokens", "_windows")


def load_run(workdir: Path) -> list[dict]:
    path = Path(workdir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a jaxprune run directory?")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: malformed JSON ({e.msg})") from e
    return rows


def metric_names(runs: dict[str, list[dict]]) -> list[str]:
    names: list[str] = []
    for rows in runs.values():
        for r in rows:
            for k, v in r["metrics"].items():
                if k not in names and isinstance(v, (int, float)) and not k.endswith(SKIP) and k != "unigram_ppl":
                    names.append(k)
    return names


def control_for(row: dict, rows: list[dict]) -> dict | None:
    """The dense control with the same cumulative fine-tuning steps as a pruned row."""
    if row["kind"] != "pruned" or row.get("cumulative_finetune_steps", 0) == 0:
        return None
    for r in rows:
        if r["kind"] == "control" and r["cumulative_finetune_steps"] == row["cumulative_finetune_steps"]:
            return r
    return None


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    return f"{a - b:+.4g}"


def with_before_finetune(rows: list[dict]) -> list[dict]:
    """Rows plus, ahead of each pruned row evaluated before its fine-tuning (eval.before_finetune), a row
    `STAGE@0` for that evaluation: sparsity as the stage, fine-tuning steps as the stage had before it."""
    out = []
    for r in rows:
        if "metrics_before_finetune" in r:
            before = dict(r, stage=f"{r['stage']}@0", metrics=r["metrics_before_finetune"])
            before["cumulative_finetune_steps"] = r.get("cumulative_finetune_steps", 0) - r.get("finetune_steps", 0)
            del before["metrics_before_finetune"]
            out.append(before)
        out.append(r)
    return out


def table_rows(runs: dict[str, list[dict]], metrics: list[str]) -> list[dict]:
    out = []
    for run, rows in runs.items():
        rows = with_before_finetune(rows)
        dense = next((r for r in rows if r["kind"] == "dense"), None)
        for r in rows:
            ctrl = control_for(r, rows)
            row = {"run": run, "stage": r["stage"], "kind": r["kind"], "target_sparsity": r["target_sparsity"],
                   "sparsity": r["sparsity"], "nonzero_params": r["nonzero_params"],
                   "finetune_steps": r.get("cumulative_finetune_steps", 0)}
            for m in metrics:
                v = r["metrics"].get(m)
                row[m] = v
                row[f"{m} vs dense"] = _delta(v, dense["metrics"].get(m)) if dense and r is not dense else ""
                row[f"{m} vs control"] = _delta(v, ctrl["metrics"].get(m)) if ctrl else ""
            out.append(row)
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def markdown(runs: dict[str, list[dict]], rows: list[dict], metrics: list[str], plots: list[str]) -> str:
    lines = ["# jaxprune report", ""]
    for run, rr in runs.items():
        dense = next((r for r in rr if r["kind"] == "dense"), None)
        if dense and "unigram_ppl" in dense["metrics"]:
            lines.append(f"- `{run}`: dense held-out perplexity {dense['metrics']['heldout_ppl']:.2f}; the unigram "
                         f"model of the training tokens scores {dense['metrics']['unigram_ppl']:.2f}.")
    lines += ["", "Deltas are this row minus the original dense model (`vs dense`) and minus the dense model "
              "fine-tuned for the same total steps on the same batches (`vs control`). For perplexity and loss, "
              "negative is better; for accuracy and exact match, positive is better.", ""]
    head = ["run", "stage", "sparsity", "nonzero", "ft steps"]
    for m in metrics:
        head += [m, "vs dense", "vs control"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["run"], r["stage"], f"{r['sparsity']:.4f}", str(r["nonzero_params"]), str(r["finetune_steps"])]
        for m in metrics:
            cells += [_fmt(r[m]), r[f"{m} vs dense"], r[f"{m} vs control"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def plot_metrics(runs: dict[str, list[dict]], metrics: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, rows in runs.items():
            chain = sorted((r for r in rows if r["kind"] in ("dense", "pruned") and m in r["metrics"]),
                           key=lambda r: r["sparsity"])
            if chain:
                ax.plot([r["sparsity"] for r in chain], [r["metrics"][m] for r in chain], marker="o", label=run)
            # Each control sits at the sparsity of the pruned stage with the same fine-tuning budget.
            pairs = [(r["sparsity"], control_for(r, rows)) for r in chain]
            pairs = sorted((x, c["metrics"][m]) for x, c in pairs if c is not None and m in c["metrics"])
            if pairs:
                ax.plot([x for x, _ in pairs], [y for _, y in pairs], linestyle="--", marker="x",
                        label=f"{run}: dense + same fine-tuning steps")
        ax.set_xlabel("sparsity of prunable weights")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        name = f"{m}_vs_sparsity.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, rows in runs.items():
        pruned = [r for r in rows if r["kind"] == "pruned"]
        if not pruned:
            continue
        last = max(pruned, key=lambda r: r["sparsity"])
        names = list(last["layer_sparsity"])
        ax.plot(range(len(names)), [last["layer_sparsity"][n] for n in names], marker="o",
                label=f"{run}: {last['stage']}")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("/kernel", "") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("sparsity")
    ax.set_title("per-layer sparsity of each run's sparsest model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "layer_sparsity.png", dpi=110)
    plt.close(fig)
    return files + ["layer_sparsity.png"]


def report(workdirs: list[Path], out: Path | None = None) -> Path:
    """Writes report.md, results.csv and the plots; returns the report's path."""
    runs = {Path(w).name: load_run(Path(w)) for w in workdirs}
    out = Path(out or workdirs[0])
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_names(runs)
    rows = table_rows(runs, metrics)
    write_csv(rows, out / "results.csv")
    plots = plot_metrics(runs, metrics, out)
    (out / "report.md").write_text(markdown(runs, rows, metrics, plots))
    return out / "report.md"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m jaxprune.report", description=__doc__.split("\n\n")[0])
    p.add_argument("workdirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    print(report(args.workdirs, args.out))


if __name__ == "__main__":
    main()
