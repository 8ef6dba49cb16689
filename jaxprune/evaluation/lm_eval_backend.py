"""lm-evaluation-harness (0.4.x) backend over jaxprune's jitted scoring.

`JaxpruneLM(model, params, tokenizer)` is an `lm_eval.api.model.LM` (via `TemplateLM`, so
contexts and continuations are tokenised by lm-eval's own rules) whose three request types
run on `jaxprune.evaluation.scoring`, the functions the own harness uses:

* loglikelihood: `scoring.loglikelihood` (length buckets, fixed batch, LM head at the
  scored positions, any batch sharding);
* loglikelihood_rolling: lm-eval's disjoint rolling windows of `max_len` tokens, scored
  by the same function;
* generate_until: `scoring.generate` (KV cache; greedy, or temperature/top-k sampling
  with a seed when do_sample), stopped at tokens holding a stop string, cut at the first
  stop string.

    lm = JaxpruneLM(model, params, tokenizer, batch_size=32)
    results = run_tasks(lm, ["lambada_openai_local", "hellaswag_local"], limit=200)

The command line is `python -m jaxprune.lm_eval --model jaxprune --model_args ...`
(jaxprune/lm_eval.py registers the model name and loads runs and checkpoints).
`LOCAL_TASKS` holds task files that read the data directory (no hub access); see its README.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from tokenizers import Tokenizer

from jaxprune.evaluation import metrics as M
from jaxprune.evaluation import scoring

LOCAL_TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


class JaxpruneLM(TemplateLM):
    """A jaxprune Transformer (dense, masked or compacted params) as an lm-eval model.

    Args:
      model: the Flax Transformer; its cfg.max_len is the context length.
      params: its parameters.
      tokenizer: the tokenizers.Tokenizer it was trained with.
      batch_size: rows per compiled batch (a multiple of the batch sharding's shards).
      apply_fn: overrides ModuleApply(model) (e.g. ModuleApply(model, batch_sharding)).
      batch_sharding: splits every batch over devices (see scoring.loglikelihood).
      prefix_token_id: the token an empty context (and each rolling window) starts from;
        default the tokenizer's <|endoftext|>.
    """

    def __init__(self, model: Any, params: Any, tokenizer: Tokenizer, *, batch_size: int = 32,
                 apply_fn: scoring.ApplyFn | None = None, batch_sharding: Any = None,
                 prefix_token_id: int | None = None) -> None:
        super().__init__()
        self.model, self.params, self.tokenizer = model, scoring._on_device(params), tokenizer
        self.apply_fn = apply_fn or scoring.ModuleApply(model, batch_sharding)
        self.batch_sharding = batch_sharding
        self.batch_size = int(batch_size)
        self.max_len = int(model.cfg.max_len)
        eot = tokenizer.token_to_id("<|endoftext|>")
        self._prefix = prefix_token_id if prefix_token_id is not None else eot
        self._eot = eot if eot is not None else self._prefix

    # -- tokenisation (TemplateLM) -------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        if self._eot is None:
            raise ValueError("the tokenizer has no <|endoftext|> token: pass prefix_token_id")
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self.eot_token_id if self._prefix is None else self._prefix

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)).ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- the three request types -----------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) -> (logprob, is_greedy)."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out = scoring.loglikelihood(self.apply_fn, self.params, pairs, max_len=self.max_len,
                                    batch_size=self.batch_size, batch_sharding=self.batch_sharding)
        return [(r.logprob, r.is_greedy) for r in out]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total loglikelihood of each whole string: every token predicted once, with up to max_len tokens of
        context, the first from prefix_token_id (lm-eval's rolling windows)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_len, context_len=1)
            for ctx, cont in map(lm_utils.make_disjoint_window, rolling):
                windows.append((list(ctx), list(cont)))
                owner.append(i)
        scores = scoring.loglikelihood(self.apply_fn, self.params, windows, max_len=self.max_len,
                                       batch_size=self.batch_size, batch_sharding=self.batch_sharding)
        totals = [0.0] * len(requests)
        for i, r in zip(owner, scores):
            totals[i] += r.logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuation of each context up to (not including) the first `until` string (the EOS text is
        always one); at most max_gen_toks tokens, capped at half the context. Requests that share their
        generation settings are batched together."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(self._gen_settings(req.args[1]), []).append(i)
        out = [""] * len(requests)
        for (until, max_new, sampling), idx in groups.items():
            prompts = [self.tok_encode(requests[i].args[0]) or [self.prefix_token_id] for i in idx]
            ids = scoring.generate(self.apply_fn, self.params, prompts, max_len=self.max_len, max_new_tokens=max_new,
                                   batch_size=self.batch_size, stop_ids=self._stop_ids(until),
                                   batch_sharding=self.batch_sharding, sampling=sampling)
            for i, gen in zip(idx, ids):
                out[i] = M.cut_at_stop(self.tok_decode(gen), until)
        return out

    def _gen_settings(self, kwargs: dict) -> tuple[tuple[str, ...], int, scoring.Sampling | None]:
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = (until,) if isinstance(until, str) else tuple(until)
        eos = self.tok_decode([self.eot_token_id]) if self._eot is not None else ""
        until = until + ((eos,) if eos and eos not in until else ())
        max_new = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        max_new = max(1, min(max_new, self.max_len // 2))  # leave the prompt half of the context at least
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        sampling = None
        if kwargs.pop("do_sample", False) and temperature > 0:
            sampling = scoring.Sampling(temperature, int(kwargs.pop("top_k", 0) or 0), int(kwargs.pop("seed", 0)))
        return until, max_new, sampling

    @functools.lru_cache(maxsize=16)  # noqa: B019  (one LM per evaluation; the vocabulary scan is slow)
    def _stop_ids(self, until: tuple[str, ...]) -> tuple[int, ...]:
        from jaxprune.evaluation.harness import stop_token_ids
        return tuple(stop_token_ids(self.tokenizer, [s for s in until if s]))


# ---------------------------------------------------------------------------
# Running tasks
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | Path | None = None) -> Any:
    """lm-eval's TaskManager that also knows the packaged offline tasks (LOCAL_TASKS).

    Cached: indexing lm-eval's task files takes seconds, and the pipeline asks once to check the
    configured names before any compute and again to run them."""
    from lm_eval.tasks import TaskManager
    paths = [str(LOCAL_TASKS)] + ([str(include_path)] if include_path else [])
    return TaskManager(include_path=paths)


def unknown_tasks(tasks: Sequence[str], manager: Any) -> list[str]:
    """One line for each name that is no task, group or tag `manager` knows, with the closest known names."""
    known = manager.all_tasks
    out = []
    for t in tasks:
        if t not in known:
            close = difflib.get_close_matches(t, known, n=3)
            out.append(f"unknown lm-eval task {t!r}" + (f" (did you mean {', '.join(close)}?)" if close else
                                                        " (`lm-eval ls tasks` lists lm-eval's own)"))
    return out


def check_offline(tasks: Sequence[str], manager: Any) -> None:
    """Fails at once, naming the packaged alternative, when a task needs the Hugging Face hub and the hub
    is unreachable (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or no network)."""
    from jaxprune.evaluation.lm_eval_tasks import LOCAL_ALTERNATIVES, hub_reachable
    local = {p.stem for p in LOCAL_TASKS.glob("*.yaml")}
    known = set(manager.all_tasks)
    hub = [t for t in tasks if t not in local and t in known]  # unknown names: lm-eval reports them
    if hub and not hub_reachable():
        names = ", ".join(f"{t} (local: {LOCAL_ALTERNATIVES[t]})" if t in LOCAL_ALTERNATIVES else t for t in hub)
        raise LookupError(f"lm-eval tasks that download from the Hugging Face hub cannot run offline: {names}; "
                          f"the packaged offline tasks are {', '.join(sorted(local))}")


def run_tasks(lm: JaxpruneLM, tasks: Sequence[str], *, limit: int | None = None, num_fewshot: int | None = None,
              include_path: str | Path | None = None, **kwargs: Any) -> dict:
    """lm_eval.simple_evaluate on `lm` with the packaged offline tasks available; returns its results dict."""
    import lm_eval
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap would fork the (threaded) JAX process
    manager = task_manager(include_path)
    check_offline(tasks, manager)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                   task_manager=manager, batch_size=lm.batch_size, **kwargs)


def flat_metrics(results: dict, prefix: str = "lmeval_") -> dict[str, float]:
    """{'lmeval_<task>_<metric>[_<filter>]': value, ..._stderr, ..._n} from simple_evaluate's results."""
    out: dict[str, float] = {}
    for task, res in results["results"].items():
        for key, value in res.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            name = f"{prefix}{task}_{metric}" + ("" if filt == "none" else f"_{filt}")
            if isinstance(value, float) and math.isnan(value):
                continue
            out[name] = float(value)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        if n is not None:
            out[f"{prefix}{task}_n"] = int(n)
    return out


def format_table(results: dict) -> str:
    """Markdown table: task, metric, value, stderr (lm-eval's), n."""
    lines = ["| lm-eval task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for task, res in results["results"].items():
        n = results.get("n-samples", {}).get(task, {}).get("effective", "")
        for key, value in res.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            err = res.get(f"{metric}_stderr,{filt}")
            err_s = f"{err:.4f}" if isinstance(err, (int, float)) else ""
            label = metric if filt == "none" else f"{metric} ({filt})"
            lines.append(f"| {task} | {label} | {value:.4f} | {err_s} | {n} |")
    return "\n".join(lines) + "\n"
