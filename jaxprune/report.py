"""Tables and plots from one or more runs' results.jsonl.

    python -m jaxprune.report WORKDIR [WORKDIR ...] [--out DIR]

Writes report.md, results.csv and PNG plots (each metric that varies against sparsity,
one colour per run, with the dense model as a reference line, the matched controls and
the before-fine-tune points; per-layer sparsity of each run's sparsest model as bars)
into the first WORKDIR or --out. Each pruned row is shown against the original dense
model and against its control: the dense model fine-tuned for the same number of steps
on the same batches. Metrics that `jaxprune.evaluate` (or a rerun with more eval.tasks)
wrote to WORKDIR/eval/evaluations.jsonl join their stage's row, each metric once: a
metric of results.jsonl is kept, one it lacks comes from the newest evaluation line.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

from jaxprune.jsonl import read_records

# Lower is better for these; higher for everything else (accuracies, exact match).
LOWER_IS_BETTER = ("loss", "ppl")
SKIP = ("_n", "_tokens", "_windows", "_stderr")  # not plotted or tabled on their own


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for n, row in read_records(path):
        if not isinstance(row, dict) or "stage" not in row or not isinstance(row.get("metrics"), dict):
            raise ValueError(f"{path}: line {n}: not a row with 'stage' and 'metrics'")
        rows.append(row)
    return rows


def load_run(workdir: Path) -> list[dict]:
    """results.jsonl rows, each with the metrics of eval/evaluations.jsonl it lacks merged in."""
    path = Path(workdir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a jaxprune run directory?")
    rows = _jsonl(path)
    evaluations = Path(workdir) / "eval" / "evaluations.jsonl"
    if evaluations.is_file():
        return merge_evaluations(rows, _jsonl(evaluations))
    return rows


def merge_evaluations(rows: list[dict], evaluations: list[dict]) -> list[dict]:
    """Adds to each row the metrics of its stage's evaluation lines that it lacks (the newest line wins);
    `evaluated_metrics` lists them. Evaluations of stages without a row are ignored."""
    latest: dict[str, dict] = {}
    for e in evaluations:
        latest.setdefault(e["stage"], {}).update(e["metrics"])
    out = []
    for r in rows:
        extra = {k: v for k, v in latest.get(r["stage"], {}).items() if k not in r["metrics"]}
        if extra:
            r = dict(r, metrics={**r["metrics"], **extra}, evaluated_metrics=sorted(extra))
        out.append(r)
    return out


def metric_names(runs: dict[str, list[dict]]) -> list[str]:
    names: list[str] = []
    for rows in runs.values():
        for r in with_before_finetune(rows):
            for k, v in r["metrics"].items():
                if k not in names and isinstance(v, (int, float)) and not k.endswith(SKIP) and k != "unigram_ppl":
                    names.append(k)
    return names


def varying(runs: dict[str, list[dict]], metric: str) -> bool:
    """Whether `metric` takes more than one value over all rows (a constant is not worth a plot)."""
    values = {r["metrics"][metric] for rows in runs.values() for r in with_before_finetune(rows)
              if isinstance(r["metrics"].get(metric), (int, float))}
    return len(values) > 1


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
                row[f"{m} stderr"] = r["metrics"].get(f"{m}_stderr")
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
    evaluated = sorted({m for rr in runs.values() for r in rr for m in r.get("evaluated_metrics", [])
                        if m in metrics})
    if evaluated:
        lines.append(f"- From `eval/evaluations.jsonl` (`jaxprune.evaluate`, or a rerun with more `eval.tasks`): "
                     f"{', '.join(f'`{m}`' for m in evaluated)}.")
    if any("metrics_before_finetune" in r for rr in runs.values() for r in rr):
        lines.append("- `STAGE@0` rows: the pruned model right after pruning, before its fine-tuning "
                     "(`eval.before_finetune`).")
    lines += ["", "Deltas are this row minus the original dense model (`vs dense`) and minus the dense model "
              "fine-tuned for the same total steps on the same batches (`vs control`). For perplexity and loss, "
              "negative is better; for accuracy and exact match, positive is better. `±` is one standard error "
              "over the evaluated examples (or windows), where the run recorded it.", ""]
    head = ["run", "stage", "sparsity", "nonzero", "ft steps"]
    for m in metrics:
        head += [m, "vs dense", "vs control"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["run"], r["stage"], f"{r['sparsity']:.4f}", str(r["nonzero_params"]), str(r["finetune_steps"])]
        for m in metrics:
            se = r[f"{m} stderr"]
            cells += [_fmt(r[m]) + (f" ± {_fmt(se)}" if se is not None and r[m] is not None else ""),
                      r[f"{m} vs dense"], r[f"{m} vs control"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _natural(name: str) -> list:
    """Sort key that puts h_2 before h_10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _label(metric: str) -> str:
    better = "lower is better" if metric.endswith(LOWER_IS_BETTER) else "higher is better"
    return f"{metric} ({better})"


def _stderr(row: dict, m: str) -> float:
    """The recorded standard error of metric ``m`` in a results row (0 where none was recorded)."""
    return row["metrics"].get(f"{m}_stderr", 0.0)


def _stderrs(rows: list[dict], m: str) -> list[float]:
    """Error bars of 1 SE: :func:`_stderr` of each row."""
    return [_stderr(r, m) for r in rows]


def plot_metrics(runs: dict[str, list[dict]], metrics: list[str], out: Path) -> list[str]:
    """One PNG per metric that varies (metric vs sparsity) and layer_sparsity.png; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    files = []
    for m in metrics:
        if not varying(runs, m):
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4))
        dense_lines: dict[float, list[tuple[str, str]]] = {}  # value -> [(run, colour)]: shared ones drawn once
        control_lines: dict[tuple, list[tuple[str, str]]] = {}
        for i, (run, rows) in enumerate(runs.items()):
            colour = colours[i % len(colours)]
            dense = next((r for r in rows if r["kind"] == "dense" and m in r["metrics"]), None)
            if dense is not None:
                key = (dense["metrics"][m], _stderr(dense, m))
                dense_lines.setdefault(key, []).append((run, colour))
            chain = sorted((r for r in rows if r["kind"] in ("dense", "pruned") and m in r["metrics"]),
                           key=lambda r: r["sparsity"])
            if chain:
                ax.errorbar([r["sparsity"] for r in chain], [r["metrics"][m] for r in chain],
                            yerr=_stderrs(chain, m), color=colour, marker="o", capsize=2,
                            label=f"{run}: pruned" + (" + fine-tuned" if any(
                                r.get("finetune_steps") for r in chain) else ""))
            before = sorted((r["sparsity"], r["metrics_before_finetune"][m]) for r in chain
                            if m in r.get("metrics_before_finetune", {}))
            if before:
                ax.plot([x for x, _ in before], [y for _, y in before], color=colour, linestyle="none",
                        marker="o", markerfacecolor="white", label=f"{run}: pruned, before fine-tuning")
            # Each control sits at the sparsity of the pruned stage with the same fine-tuning budget.
            pairs = [(r["sparsity"], control_for(r, rows)) for r in chain]
            pairs = tuple(sorted((x, c["metrics"][m], _stderr(c, m))
                                 for x, c in pairs if c is not None and m in c["metrics"]))
            if pairs:
                control_lines.setdefault(pairs, []).append((run, colour))
        for (value, se), owners in dense_lines.items():
            shared = len(owners) > 1
            colour = "0.4" if shared else owners[0][1]
            ax.axhline(value, color=colour, linestyle=":", linewidth=1,
                       label="dense" + (f" (shared by {len(owners)} runs)" if shared else f" ({owners[0][0]})"))
            if se:
                ax.axhspan(value - se, value + se, color=colour, alpha=0.1, linewidth=0)
        for pairs, owners in control_lines.items():
            shared = len(owners) > 1
            # drawn a little right of their stages so that their error bars do not hide the pruned ones
            ax.errorbar([x + 0.008 for x, _, _ in pairs], [y for _, y, _ in pairs], yerr=[e for _, _, e in pairs],
                        color="0.4" if shared else owners[0][1], linestyle="--", marker="x", capsize=2,
                        label="control: dense + same fine-tuning steps" + (
                            f" (shared by {len(owners)} runs)" if shared else f" ({owners[0][0]})"))
        ax.set_xlim(-0.02, max([0.1] + [r["sparsity"] for rows in runs.values() for r in rows]) + 0.03)
        ax.set_xlabel("sparsity of prunable weights")
        ax.set_ylabel(_label(m))
        ax.set_title(f"{m} vs sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        name = f"{m}_vs_sparsity.png"
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    sparsest = {run: max((r for r in rows if r["kind"] == "pruned"), key=lambda r: r["sparsity"])
                for run, rows in runs.items() if any(r["kind"] == "pruned" for r in rows)}
    if not sparsest:
        return files
    names = sorted(dict.fromkeys(n for r in sparsest.values() for n in r["layer_sparsity"]), key=_natural)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.22 * len(names) * len(sparsest))), 4))
    width = 0.8 / len(sparsest)
    for i, (run, last) in enumerate(sparsest.items()):
        xs = [j + (i - (len(sparsest) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [last["layer_sparsity"].get(n, 0.0) for n in names], width=width,
               color=colours[i % len(colours)], label=f"{run}: {last['stage']} ({last['sparsity']:.2f} overall)")
    if len(names) <= 48:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("/kernel", "") for n in names], rotation=90, fontsize=6)
    else:  # too many to name: one tick per block (the block's first layer), in layer order
        blocks = {}
        for j, n in enumerate(names):
            blocks.setdefault(n.split("/")[0], j)
        ax.set_xticks(list(blocks.values()))
        ax.set_xticklabels(list(blocks), rotation=90, fontsize=6)
        ax.set_xlabel(f"{len(names)} prunable layers, in order (ticks: the first layer of each block)")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("sparsity of the layer")
    ax.set_ylim(0, 1)
    ax.set_title("per-layer sparsity of each run's sparsest model")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.savefig(out / "layer_sparsity.png", dpi=120, bbox_inches="tight")
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
