"""Markdown tables of the SmolLM2 recovery arms (configs/smollm2_lambada.py :iter / :oneshot / :nofinetune).

    python experiments/recovery/table.py runs/smollm2_iter_sparsegpt_kd [more runs ...]

1. Every evaluated model of every run (the dense model once, with every metric any run measured on
   it; runs whose dense models disagree are refused): arm, stage, sparsity, fine-tuning tokens so far, the metrics,
   each with the ratio to the dense model (perplexities) or the difference (accuracies), and to the
   run's matched control (the dense model fine-tuned on the same tokens) where it has one. Accuracies
   and exact matches carry one standard error: the run's own `<metric>_stderr`, or for runs that
   predate it the same quantity from the accuracy and n (exact for 0/1 outcomes).
2. "Which rate each task tolerates": per arm and task, the highest sparsity whose metric stays within
   5 % of the dense model's perplexity, or within 0.02 of its accuracy (and every lower rate too);
   "< R" when already the arm's lowest evaluated rate R fails, "*" when the task was evaluated at only
   some of the arm's rates, "n/a" when the dense model is itself within 0.02 of zero (no drop could
   show), "—" when the arm was not evaluated on the task.
Every number is read from the runs' results.jsonl, eval/evaluations.jsonl (`jaxprune.evaluate` of
more tasks on the stages' checkpoints) and config.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from jaxprune.report import load_run  # noqa: E402  (standard library only: no JAX start-up)

PPL = (("heldout_ppl", "books valid ppl"), ("wikitext2_ppl", "WikiText-2 ppl"), ("books_test_ppl", "books test ppl"),
       ("lambada_ppl", "LAMBADA ppl"))
ACC = (("lambada_acc", "LAMBADA acc"), ("hellaswag_acc", "HellaSwag acc"), ("hellaswag_acc_norm", "HellaSwag acc_norm"),
       ("storycloze_acc", "StoryCloze acc"), ("storycloze_acc_norm", "StoryCloze acc_norm"),
       ("nq_open_em", "NQ EM"), ("webquestions_em", "WebQ EM"), ("triviaqa_em", "TriviaQA EM"),
       ("nq_open_5shot_em", "NQ EM 5-shot"), ("webquestions_5shot_em", "WebQ EM 5-shot"),
       ("triviaqa_5shot_em", "TriviaQA EM 5-shot"))
PPL_KEYS = {k for k, _ in PPL}
PPL_TOL, ACC_TOL = 1.05, 0.02


def arm_name(cfg: dict) -> str:
    pr, ft = cfg["pruning"], cfg["finetune"]
    kind = "sweep, no fine-tune" if pr["schedule"] == "sweep" else ("iterative" if len(pr["rates"]) > 1 else "one-shot")
    loss = ft.get("loss", "ce") if ft["steps"] else "—"
    lr = f"{ft['lr']:.0e}".replace("e-0", "e-")  # 5e-5
    if ft.get("kd_hidden_layers") and loss != "ce":
        loss += f" + hidden x{ft['kd_hidden_weight']:g} ({len(ft['kd_hidden_layers'])} blocks)"
    usual = {"iterative": 8, "one-shot": 40}.get(kind)  # configs/smollm2_lambada.py's CPU arms
    steps = f", {ft['steps']} steps/stage" if usual and ft["steps"] != usual else ""
    return f"{pr['method']} {kind}" + (f", {loss}, lr {lr}{steps}" if ft["steps"] else "")


def models(run: Path) -> list[dict]:
    """One dict per evaluated model: arm, stage, kind, sparsity, tokens (cumulative fine-tune), metrics."""
    cfg = json.loads((run / "config.json").read_text())["config"]
    per_step = cfg["finetune"]["batch_size"] * (cfg["model"]["max_len"] or 0)  # 0: the preset's length, unknown here
    sweep = cfg["pruning"]["schedule"] == "sweep"  # every stage starts from dense
    out, done = [], {}
    for r in load_run(run):
        tokens = r.get("finetune_steps", 0) * per_step
        done[r["kind"]] = tokens if sweep else done.get(r["kind"], 0) + tokens
        out.append({"arm": arm_name(cfg), "stage": r["stage"], "kind": r["kind"], "sparsity": r["sparsity"],
                    "tokens": done[r["kind"]], "metrics": r["metrics"], "run": str(run)})
    return out


def stderr(metrics: dict, key: str) -> float | None:
    """The metric's standard error as recorded, or for a mean of 0/1 outcomes from the mean and n."""
    if f"{key}_stderr" in metrics:
        return metrics[f"{key}_stderr"]
    parts = key.split("_")
    n = next((metrics[f] for f in ("_".join(parts[:i]) + "_n" for i in range(len(parts) - 1, 0, -1)) if f in metrics),
             None)
    if key in PPL_KEYS or not n or n < 2:
        return None
    p = metrics[key]
    return math.sqrt(p * (1 - p) / (n - 1))


def merged_dense(all_models: list[dict]) -> dict:
    """The dense model's metrics from every run's dense stage (each arm evaluates the same imported model,
    and some arms evaluated it on more tasks); a metric two runs both measured must agree."""
    dense: dict = {}
    for m in all_models:
        if m["kind"] != "dense":
            continue
        for k, v in m["metrics"].items():
            if k.endswith("_seconds"):
                continue
            if k in dense and not math.isclose(dense[k], v, rel_tol=1e-6, abs_tol=1e-9):
                raise SystemExit(f"the runs' dense models differ: {k} = {dense[k]} and {v} ({m['run']})")
            dense.setdefault(k, v)
    if not dense:
        raise SystemExit("no dense row in these runs")
    return dense


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def tables(runs: list[Path]) -> str:
    all_models = [m for run in runs for m in models(run)]
    dense = merged_dense(all_models)
    cols = [(k, h) for k, h in PPL + ACC if any(k in m["metrics"] for m in all_models)]
    lines = ["| arm | stage | sparsity | fine-tune tokens | " + " | ".join(h for _, h in cols) + " |",
             "|" + "---|" * (len(cols) + 4)]
    seen_dense = False
    for m in all_models:
        if m["kind"] == "dense":
            if seen_dense:
                continue
            seen_dense = True
            m = {**m, "metrics": dense}
        ctrl = next((c["metrics"] for c in all_models if c["kind"] == "control" and c["run"] == m["run"]
                     and c["tokens"] == m["tokens"]), None) if m["kind"] == "pruned" else None
        cells = []
        for k, _ in cols:
            v = m["metrics"].get(k)
            if v is None:
                cells.append("—")
                continue
            se = stderr(m["metrics"], k)
            text = _fmt(v) + (f" ± {se:.3f}" if se is not None else "")
            refs = [r for r in (dense if m["kind"] != "dense" else None, ctrl) if r is not None and k in r]
            if k in PPL_KEYS:
                rel = [f"{v / r[k]:.2f}×" for r in refs]
            else:
                rel = [f"{v - r[k]:+.3f}" for r in refs]
            if ctrl is not None and k in ctrl:
                rel[-1] += " ctrl"
            cells.append(text + (f" ({', '.join(rel)})" if rel else ""))
        arm = "dense" if m["kind"] == "dense" else m["arm"] + (" (control)" if m["kind"] == "control" else "")
        lines.append(f"| {arm} | {m['stage']} | {m['sparsity']:.3f} | {m['tokens']:,} | " + " | ".join(cells) + " |")
    lines += ["", f"Which rate each task tolerates: the highest sparsity (with every lower one) whose perplexity "
              f"stays within {PPL_TOL - 1:.0%} of the dense model's, or accuracy within {ACC_TOL} of it.", "",
              "| arm | " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    arms = dict.fromkeys(m["arm"] for m in all_models if m["kind"] == "pruned")
    partial = False
    for arm in arms:
        pruned = sorted((m for m in all_models if m["arm"] == arm and m["kind"] == "pruned"), key=lambda m: m["sparsity"])
        cells = []
        for k, _ in cols:
            scored = [m for m in pruned if k in m["metrics"]]
            if k in dense and k not in PPL_KEYS and dense[k] <= ACC_TOL:
                cells.append("n/a (dense at floor)")  # no drop of 0.02 could show
                continue
            if not scored or k not in dense:
                cells.append("—")  # not evaluated
                continue
            best = None
            for m in scored:
                v = m["metrics"][k]
                if not (v <= dense[k] * PPL_TOL if k in PPL_KEYS else v >= dense[k] - ACC_TOL - 1e-9):
                    break
                best = m["sparsity"]
            cell = f"{best:.0%}" if best is not None else f"< {scored[0]['sparsity']:.0%}"
            if len(scored) < len(pruned):  # the claim covers only the evaluated rates
                cell += "*"
                partial = True
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if partial:
        lines += ["", "\\* evaluated at only some of the arm's rates (see the first table): the claim covers those."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(tables([Path(p) for p in sys.argv[1:]]), end="")
