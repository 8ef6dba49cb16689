"""The paper's pipeline as stages: dense -> [prune -> fine-tune -> evaluate]* -> results.jsonl.

Stages run in this order: `dense` (pretrain or load, then evaluate), then for each
rate i of the schedule `prune_i` (prune the previous stage's model to the cumulative
rate, fine-tune `finetune.steps`, evaluate) followed by its control `control_i` (the
dense model fine-tuned for the same total steps on the same batches, no pruning).
Schedule "sweep" prunes the dense model to each rate independently (one-shot each,
one shared control); "gradual" prunes inside one fine-tuning phase (Zhu & Gupta).
Each finished stage appends one line to WORKDIR/results.jsonl; a rerun skips
finished stages and resumes the current one from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune import parallel, sparsity
from jaxprune import workdir as workdir_lock
from jaxprune.config import (CALIBRATED_METHODS, PRETRAINED_INITS, ConfigError, check_devices, data_dir, model_config,
                             validate)
from jaxprune.data import corpus
from jaxprune.data.errors import DataError
from jaxprune.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from jaxprune.evaluation.harness import write_text_atomic
from jaxprune.evaluation.scoring import ModuleApply
from jaxprune.models import build_model, init_params, logical_axes
from jaxprune.models.transformer import head_logits
from jaxprune.sparsity.masks import leaves_with_paths
from jaxprune.jsonl import append_jsonl, read_records, repair_jsonl
from jaxprune.training.loop import (Phase, Preempted, final_state, handle_sigterm, preemption_requested, run_phase,
                                    write_scalars)
from jaxprune.training.state import TrainState, create_state
from jaxprune.training.step import lr_schedule, make_eval_step, make_optimizer, make_train_step

RESULTS = "results.jsonl"
EVALUATIONS = "eval/evaluations.jsonl"  # jaxprune.evaluate and evaluations of missing tasks on finished stages
BEFORE_FINETUNE = "before_finetune.json"  # metrics of a pruned stage before its fine-tuning (eval.before_finetune)
CALIBRATION_KEYS = ("calibration_samples", "calibration_batch", "sparsegpt_blocksize", "sparsegpt_damp")


# ---------------------------------------------------------------------------
# Stage plan
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # dense | prune_i | control_i | gradual | gradual_control
    kind: str  # dense | pruned | control
    index: int  # 0 for dense, i for the i-th pruning stage
    source: str | None  # stage whose final model this one starts from
    rate: float  # cumulative target sparsity (0 for dense and controls)
    steps: int  # fine-tuning steps in this stage
    gradual: bool = False


def plan(config: ml_collections.ConfigDict) -> list[Stage]:
    """The ordered list of stages a config runs."""
    ft = config.finetune.steps
    rates = tuple(float(r) for r in config.pruning.rates)
    stages = [Stage("dense", "dense", 0, None, 0.0, config.pretrain.steps if config.model.init == "scratch" else 0)]
    control = config.finetune.control and ft > 0
    if config.pruning.schedule == "gradual" and rates:
        stages.append(Stage("gradual", "pruned", 1, "dense", rates[-1], ft, gradual=True))
        if control:
            stages.append(Stage("control_1", "control", 1, "dense", 0.0, ft))
        return stages
    sweep = config.pruning.schedule == "sweep"
    for i, rate in enumerate(rates, start=1):
        source = "dense" if i == 1 or sweep else f"prune_{i - 1}"
        stages.append(Stage(f"prune_{i}", "pruned", 1 if sweep else i, source, rate, ft))
        if control and (i == 1 or not sweep):
            stages.append(Stage(f"control_{i}", "control", i, "dense" if i == 1 else f"control_{i - 1}", 0.0, ft))
    return stages


class PruningError(ValueError):
    """Pruning would leave a layer with no weights at all (the message names the layers)."""


def read_results(workdir: Path, repair: bool = False) -> list[dict]:
    """The rows of WORKDIR/results.jsonl. A last line without its newline (a kill mid-append) is
    ignored with a warning, and with `repair` (the run that owns the workdir) cut off the file: its
    stage reruns. A malformed complete line raises naming the file and line."""
    path = workdir / RESULTS
    if not path.is_file():
        return []
    if repair:
        repair_jsonl(path)
    rows = []
    for n, row in read_records(path, warn_partial=True, hint="; the file is written only by jaxprune: restore it "
                                                               "or delete that line (its stage then reruns)"):
        if not isinstance(row, dict) or not isinstance(row.get("stage"), str):
            raise DataError(f"{path}: line {n}: not a results row (expected an object with a 'stage'); restore "
                            f"the file or delete that line (its stage then reruns)")
        rows.append(row)
    return rows


def config_digest(config: ml_collections.ConfigDict) -> str:
    """Digest of everything that changes the numbers (not eval-only or cosmetic fields)."""
    d = json.loads(config.to_json_best_effort())
    for key in ("log_every",):
        d["pretrain"].pop(key, None)
        d["finetune"].pop(key, None)
    d.pop("eval", None)
    d.pop("checkpoint", None)
    if d["pruning"].get("method") not in CALIBRATED_METHODS:  # keeps digests of runs from before these keys
        for key in CALIBRATION_KEYS:
            d["pruning"].pop(key, None)
    if d["finetune"].get("loss", "ce") == "ce":  # cross-entropy runs keep the digests they had before KD
        for key in ("loss", "kd_temperature", "kd_alpha"):
            d["finetune"].pop(key, None)
    if not d["finetune"].get("kd_hidden_layers"):  # logit-only runs keep the digests they had before these keys
        for key in ("kd_hidden_layers", "kd_hidden_weight"):
            d["finetune"].pop(key, None)
    for phase in ("pretrain", "finetune"):  # unchunked runs keep the digests they had before loss_chunk
        if not d[phase].get("loss_chunk"):
            d[phase].pop("loss_chunk", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _config_diff(saved: Any, config: ml_collections.ConfigDict, limit: int = 4) -> str:
    """The keys whose values differ between a saved config.json and `config`, e.g. 'finetune.lr: 0.0003 -> 1'."""
    old = _flat(saved.get("config", {})) if isinstance(saved, dict) else {}
    new = _flat(json.loads(config.to_json_best_effort()))
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
            and not k.startswith(("eval.", "checkpoint.")) and not k.endswith(".log_every")]
    shown = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit]]
    return ", ".join(shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])) or "unknown changes"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def pretrained_file_error(config: ml_collections.ConfigDict, e: Exception) -> DataError:
    """A model file that cannot be read (missing, truncated, not GGUF, hub offline...) as one DataError."""
    text = " ".join(str(e).split()) if not isinstance(e, ConnectionError) else str(e)
    path = config.model.init_path
    return DataError(text if path in text else f"model.init_path {path!r}: {text}")


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: Path, progress: bool = False):
    """The configured tokenizer, or a byte-level BPE trained once and saved in the workdir."""
    if config.data.tokenizer:
        return load_tokenizer(config.data.tokenizer)
    if config.model.init in PRETRAINED_INITS:  # a pretrained model brings its own tokenizer
        from jaxprune.models import load_pretrained_tokenizer
        try:
            return load_pretrained_tokenizer(config)
        except (ValueError, KeyError, OSError) as e:  # the user's model file (OSError: also hub offline)
            raise pretrained_file_error(config, e) from e
    path = workdir / "tokenizer.json"
    if path.is_file():
        return load_tokenizer(path)
    texts = corpus.load_texts(config.data.source, "train", data_dir(config), tuple(config.data.files),
                              max_bytes=config.data.tokenizer_train_bytes)
    _log(f"training a {model_config(config).vocab_size}-token BPE tokenizer on "
         f"{sum(map(len, texts)) / 1e6:.1f} M characters")
    tok = train_bpe(texts, model_config(config).vocab_size, progress=progress)
    save_tokenizer(tok, path)
    return tok


def _log(line: str) -> None:
    """A progress line on stderr (always shown; --progress only controls the bars)."""
    print(line, file=sys.stderr, flush=True)


def prepare_tokens(config: ml_collections.ConfigDict, workdir: Path, tok,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Tokenised (train, validation) text, cached."""
    cache = Path(config.data.cache_dir) if config.data.cache_dir else workdir / "cache"
    d, src = data_dir(config), config.data.source
    train = corpus.load_texts(src, "train", d, tuple(config.data.files), config.data.max_train_bytes)
    if src == "files":
        val = [corpus.read_text(Path(f)) for f in config.data.eval_files] or train[-1:]
    else:
        val = corpus.load_texts(src, "validation", d, max_bytes=config.data.max_eval_bytes)
    return (corpus.tokenize(tok, train, cache, key=f"{src}/train", progress=progress),
            corpus.tokenize(tok, val, cache, key=f"{src}/validation", progress=progress))


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
class Experiment:
    """Holds the compiled functions and data of one run; `run()` executes the stage plan."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True,
                 read_only: bool = False):
        """`read_only` is for inspecting a run (evaluating its checkpoints) while it may still be running:
        the workdir lock is not checked; `run()` must not be called."""
        validate(config)
        check_devices(config, jax.device_count())
        self.config, self.workdir, self.progress = config, Path(workdir), progress
        self.digest = config_digest(config)
        self.read_only = read_only
        self.prune_seconds: dict[str, float] = {}
        self.saved_config: dict | None = None  # WORKDIR/config.json of an earlier run of this config
        if read_only:
            if not self.workdir.is_dir():
                raise ConfigError(f"workdir {str(self.workdir)!r} does not exist")
        else:
            self._check_writable()
            if parallel.is_primary():  # process 0 alone takes the lock: the others would see its lock
                workdir_lock.check(self.workdir)  # refuse early; run() takes the lock
        self._check_workdir()
        self._check_init_checkpoint()
        self._check_task_data()
        self._check_lm_eval_tasks()

        self.mesh = parallel.make_mesh(config.mesh)
        self.rules = parallel.rules(config.mesh)
        mcfg = model_config(config)
        self.model_cfg = mcfg
        self.model = build_model(mcfg)
        self.seq_len = mcfg.max_len
        if config.model.init in PRETRAINED_INITS:  # HF: every shard, tensor name and shape, from headers only
            from jaxprune.models.pretrained import check_pretrained
            try:
                check_pretrained(config, mcfg)
            except (ValueError, KeyError, OSError) as e:
                raise pretrained_file_error(config, e) from e
        self._check_prunable()
        bad = [i for i in config.finetune.kd_hidden_layers if i >= mcfg.n_layer]
        if bad:
            raise ConfigError(f"invalid config:\n  - finetune.kd_hidden_layers {bad} do not exist: the model has "
                              f"{mcfg.n_layer} blocks (0..{mcfg.n_layer - 1})")
        self.tokenizer = prepare_tokenizer(config, self.workdir, progress)
        if self.tokenizer.get_vocab_size() > mcfg.vocab_size:
            where = config.data.tokenizer or (config.model.init_path if config.model.init in PRETRAINED_INITS
                                              else str(self.workdir / "tokenizer.json"))
            raise ConfigError(f"invalid config:\n  - model.vocab_size={mcfg.vocab_size} is smaller than the "
                              f"{self.tokenizer.get_vocab_size()} tokens of the tokenizer {where}; set "
                              f"model.vocab_size >= {self.tokenizer.get_vocab_size()} or use another tokenizer")
        self.train_tokens, self.val_tokens = prepare_tokens(config, self.workdir, self.tokenizer, progress)
        self._check_token_counts()

        self.param_sh = parallel.param_shardings(logical_axes(self.model), self.mesh, self.rules)
        self.batch_sh = parallel.batch_sharding(self.mesh)
        shards = parallel.batch_shards(self.batch_sh)
        self.eval_step = jax.jit(make_eval_step(self.model.apply), in_shardings=(self.param_sh, self.batch_sh),
                                 out_shardings=parallel.replicated(self.mesh))
        self.heldout = [parallel.global_batch(b, self.batch_sh if len(b) % shards == 0 else
                                              parallel.replicated(self.mesh)) for b in corpus.eval_batches(
            self.val_tokens, self.seq_len, config.eval.batch_size, config.eval.heldout_batches)]
        self._fns: dict = {}
        self._teacher_params = None
        self.evaluate_command: str | None = None
        self._prune_fn = None
        self._groups = None

    def _check_writable(self) -> None:
        """The workdir (or the nearest existing parent it would be created in) must be writable."""
        d = self.workdir
        if d.exists() and not d.is_dir():
            raise ConfigError(f"--workdir {str(d)!r} is a file, not a directory")
        parent = d
        while not parent.exists():
            parent = parent.parent
        try:  # a probe file: permission bits alone miss read-only filesystems (and root ignores them)
            fd, probe = tempfile.mkstemp(prefix=".jaxprune-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"--workdir {str(d)!r} is not writable ({str(parent)!r}: {e.strerror}); use another "
                              f"--workdir") from e

    def _check_workdir(self) -> None:
        """A workdir that holds a run must hold this config's run; its results.jsonl must be readable."""
        path = self.workdir / "config.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: unreadable ({e}); it records which config owns {self.workdir}") from e
            if not isinstance(saved, dict) or saved.get("digest") != self.digest:
                raise ConfigError(f"{self.workdir} holds a run with a different config ({_config_diff(saved, self.config)}; "
                                  f"digest {saved.get('digest') if isinstance(saved, dict) else None} vs "
                                  f"{self.digest}): use a new --workdir, or the config that run was started with")
            self.saved_config = saved
        read_results(self.workdir)  # a malformed line fails now, not after the next stage's training

    def _claim_workdir(self) -> None:
        """Writes WORKDIR/config.json once every check has passed (a failed run leaves the workdir unclaimed)."""
        path = self.workdir / "config.json"
        if not path.is_file() and parallel.is_primary():
            write_text_atomic(path, json.dumps({"digest": self.digest, "config": json.loads(
                self.config.to_json_best_effort())}, indent=1))

    def _check_init_checkpoint(self) -> None:
        """model.init=checkpoint must name the finished dense stage of another run."""
        if self.config.model.init != "checkpoint":
            return
        stage_dir = Path(self.config.model.init_path)
        if not (stage_dir / "checkpoints").is_dir() or not (stage_dir.parent / RESULTS).is_file():
            raise ConfigError(f"invalid config:\n  - model.init_path {str(stage_dir)!r} is not a stage directory "
                              f"of a jaxprune run (expected {stage_dir / 'checkpoints'} and "
                              f"{stage_dir.parent / RESULTS}), e.g. runs/gpt_lambada/dense")
        if stage_dir.name not in {r["stage"] for r in read_results(stage_dir.parent)}:
            raise ConfigError(f"invalid config:\n  - model.init_path {str(stage_dir)!r} is not finished "
                              f"({stage_dir.parent / RESULTS} has no {stage_dir.name!r} row): wait for that run's "
                              f"stage to end")
        from jaxprune.training.checkpoint import CheckpointError, Checkpointer
        ckpt = Checkpointer(stage_dir / "checkpoints")
        latest = ckpt.latest_step()
        ckpt.close()
        if latest is None:
            raise CheckpointError(f"{stage_dir / 'checkpoints'} holds no finished checkpoint (model.init_path)")

    def _check_prunable(self) -> None:
        """pruning.include/exclude must select at least one parameter when the plan prunes."""
        if not any(s.kind == "pruned" for s in plan(self.config)):
            return
        pr = self.config.pruning
        abstract = self._abstract_params()
        masks = jax.eval_shape(lambda p: sparsity.create_masks(p, pr.include, pr.exclude), abstract)
        if not [m for _, m in leaves_with_paths(masks) if m is not None]:
            paths = [p for p, _ in leaves_with_paths(abstract)]
            raise ConfigError(f"invalid config:\n  - pruning.include {tuple(pr.include)} (minus pruning.exclude "
                              f"{tuple(pr.exclude)}) matches no parameter; parameter paths look like "
                              f"{', '.join(paths[:3])}")

    def _check_token_counts(self) -> None:
        """Enough tokenised text for one batch of every phase that trains, and one held-out window."""
        def too_short(split: str, e: DataError) -> DataError:
            return DataError(f"the {split} text of data.source={self.config.data.source!r} is too short: {e}; give "
                             f"more text (or raise data.max_train_bytes / data.max_eval_bytes), or lower the batch "
                             f"size or model.max_len")

        for name, phase in (("pretrain", self.config.pretrain), ("finetune", self.config.finetune)):
            steps = phase.steps if name == "finetune" or self.config.model.init == "scratch" else 0
            if steps:
                try:
                    corpus.train_batches(self.train_tokens, self.seq_len, phase.batch_size, self.config.seed)
                except DataError as e:
                    raise too_short("training", e) from e
        try:
            corpus.PackedSequences(self.val_tokens, self.seq_len)
        except DataError as e:
            raise too_short("validation", e) from e

    def _check_task_data(self) -> None:
        """Reads every configured evaluation task now, so a broken file fails before any compute."""
        tasks = [t for t in self.config.eval.tasks if t != "heldout"]
        if tasks:
            from jaxprune.config import REQUIRED_FILES
            from jaxprune.data.tasks import load_task
            from jaxprune.evaluation.perplexity import CORPORA, load_corpus_texts
            d = data_dir(self.config)
            for name in tasks:
                if name in CORPORA:
                    load_corpus_texts(name, d)
                    continue
                try:
                    load_task(name, d)
                except UnicodeDecodeError as e:  # the task readers do not name the file for these: find it
                    for rel in REQUIRED_FILES.get(name, []) if d is not None else []:
                        if not rel.endswith(".bz2"):
                            corpus.read_text(d / rel)  # raises DataError with the file and line
                    raise corpus.DataError(f"task {name}: data is not valid UTF-8 ({e})") from e

    def _check_lm_eval_tasks(self) -> None:
        """eval.lm_eval_tasks names lm-eval does not know, or that need the hub while it is out of reach,
        fail now (lm-eval would only find out after training)."""
        tasks = list(self.config.eval.get("lm_eval_tasks", ()) or ())
        if not tasks:
            return
        from jaxprune.evaluation import lm_eval_backend as B  # lm_eval is installed: validate() checked
        manager = B.task_manager()
        problems = B.unknown_tasks(tasks, manager)
        if problems:
            raise ConfigError("invalid config:\n" + "\n".join(f"  - eval.lm_eval_tasks: {p}" for p in problems))
        try:
            B.check_offline(tasks, manager)
        except LookupError as e:
            raise ConfigError(f"eval.lm_eval_tasks: {e}") from e

    # -- compiled pieces -----------------------------------------------------
    def _phase_cfg(self, stage: Stage) -> ml_collections.ConfigDict:
        return self.config.pretrain if stage.kind == "dense" else self.config.finetune

    def _abstract_state(self, stage: Stage, masked: bool) -> TrainState:
        tx = make_optimizer(self._phase_cfg(stage))

        def make():
            params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._abstract_params())
            masks = sparsity.create_masks(params, self.config.pruning.include, self.config.pruning.exclude) \
                if masked else None
            return create_state(params, tx, masks, 0)

        abstract = jax.eval_shape(make)
        sh = parallel.state_shardings(abstract, self.param_sh, tx, self.mesh)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)

    def _abstract_params(self):
        return jax.eval_shape(lambda: init_params(self.model, jax.random.key(0))[0])

    def _train_step(self, stage: Stage, abstract: TrainState):
        key = (stage.kind == "dense", jax.tree.structure(abstract.masks, is_leaf=lambda x: x is None))
        phase = self._phase_cfg(stage)
        loss = "ce" if stage.kind == "dense" else phase.loss
        if key not in self._fns:
            tx = make_optimizer(phase)
            state_sh = jax.tree.map(lambda a: a.sharding, abstract)
            step = make_train_step(self.model.apply, tx, phase.grad_accum, loss=loss,
                                   kd_temperature=phase.get("kd_temperature", 1.0), kd_alpha=phase.get("kd_alpha", 0.0),
                                   head=functools.partial(head_logits, self.model_cfg),
                                   loss_chunk=phase.get("loss_chunk", 0),
                                   hidden_layers=tuple(phase.get("kd_hidden_layers", ())),
                                   hidden_weight=phase.get("kd_hidden_weight", 1.0))
            if loss == "ce":
                self._fns[key] = jax.jit(step, in_shardings=(state_sh, self.batch_sh),
                                         out_shardings=(state_sh, parallel.replicated(self.mesh)), donate_argnums=0)
            else:  # the teacher's params are an argument (sharded like the student's), never donated
                self._fns[key] = jax.jit(step, in_shardings=(state_sh, self.batch_sh, self.param_sh),
                                         out_shardings=(state_sh, parallel.replicated(self.mesh)), donate_argnums=0)
        fn = self._fns[key]
        return fn if loss == "ce" else (lambda state, batch: fn(state, batch, self._teacher()))

    def _teacher(self):
        """The distillation teacher: the final params of this run's dense stage (loaded once, frozen)."""
        if self._teacher_params is None:
            dense = plan(self.config)[0]
            state = final_state(self.workdir / dense.name, self._abstract_state(dense, masked=False),
                                {"digest": self.digest, "phase": dense.name})
            if state is None:
                raise RuntimeError(f"distillation needs the final checkpoint of {dense.name}, missing from "
                                   f"{self.workdir / dense.name}")
            self._teacher_params = state.params
        return self._teacher_params

    def prune_masks(self, params, masks, rate: float, rng):
        """New masks at cumulative `rate`: counts are exact on the host, the selection is jitted once."""
        pr = self.config.pruning
        if self._groups is None:
            self._groups = ()
            if pr.pattern == "head":
                self._groups = (sparsity.llama_head_groups if self.model_cfg.arch == "llama"
                                else sparsity.gpt2_head_groups)(params, self.model_cfg.n_head)
            elif pr.pattern == "neuron":
                self._groups = sparsity.auto_neuron_groups(params)
        groups = self._groups or None
        if self._prune_fn is None:
            def fn(params, masks, counts, rng):
                return sparsity.prune(params, masks, scores=pr.method, scope=pr.scope, pattern=pr.pattern,
                                      n=pr.n, m=pr.m, groups=groups, counts=counts,
                                      rng=jax.random.wrap_key_data(rng))

            mask_sh = parallel.mask_shardings(masks, self.param_sh)
            rep = parallel.replicated(self.mesh)
            self._prune_fn = jax.jit(fn, in_shardings=(self.param_sh, mask_sh, rep, rep), out_shardings=mask_sh)
        counts = sparsity.prune_counts(params, masks, float(rate), scope=pr.scope, pattern=pr.pattern,
                                       groups=groups)
        return self._prune_fn(params, masks, counts, rng)

    def prune(self, params, masks, rate: float, rng):
        """(params, masks) pruned to cumulative `rate`: magnitude/random only change the masks
        (:meth:`prune_masks`); wanda/sparsegpt calibrate block by block on the mesh on
        `pruning.calibration_samples` training sequences (the first batch of a shuffle with seed
        `seed + 2`), with earlier blocks already pruned, and sparsegpt also updates the weights."""
        pr = self.config.pruning
        if pr.method not in CALIBRATED_METHODS:
            return params, self.prune_masks(params, masks, rate, rng)
        from jaxprune.models.capture import calibrate_and_prune
        tokens = np.asarray(corpus.train_batches(self.train_tokens, self.seq_len, pr.calibration_samples,
                                                 self.config.seed + 2)[0])[:, :self.seq_len]
        layer = sparsity.layer_pruner(pr.method, float(rate), pattern=pr.pattern, n=pr.n, m=pr.m,
                                      blocksize=pr.sparsegpt_blocksize, damp=pr.sparsegpt_damp)
        # on the mesh, in the model's shardings: nothing is gathered to a host (every process passes the
        # same tokens and copies only its own rows)
        return calibrate_and_prune(self.model_cfg, params, masks, tokens, layer, batch_size=pr.calibration_batch,
                                   batch_sharding=self.batch_sh)

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, params, tag: str = "tasks", out_dir: Path | None = None,
                 tasks: list[str] | None = None) -> dict:
        """Held-out loss/perplexity (always: it is the pipeline's primary metric) plus every configured task
        (or `tasks`); task tables go to OUT_DIR/eval/<tag>.{md,json} (default: the workdir)."""
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        nll = tokens = 0.0
        for b in self.heldout:
            s, n = self.eval_step(params, b)
            nll, tokens = nll + float(s), tokens + float(n)
        metrics["heldout_loss"] = nll / tokens
        metrics["heldout_ppl"] = float(np.exp(nll / tokens))
        metrics["heldout_tokens"] = int(tokens)
        _log(f"[{tag}] held-out perplexity {metrics['heldout_ppl']:.4g} ({int(tokens)} tokens, "
             f"{time.perf_counter() - t0:.1f} s)")
        tasks = [t for t in (self.config.eval.tasks if tasks is None else tasks) if t != "heldout"]
        if tasks:
            from jaxprune.evaluation import harness
            metrics.update(harness.evaluate_tasks(
                _Announced(tasks, tag), self.model, params, self.tokenizer, self.config.eval, data_dir(self.config),
                out_dir=(out_dir or self.workdir) if parallel.is_primary() else None, tag=tag,
                apply_fn=ModuleApply(self.model, self.batch_sh)))
        return metrics

    # -- stages --------------------------------------------------------------
    def _batches(self, stage: Stage):
        phase = self._phase_cfg(stage)
        seed = self.config.seed if stage.kind == "dense" else self.config.seed + 1
        batches = corpus.train_batches(self.train_tokens, self.seq_len, phase.batch_size, seed)
        offset = 0 if stage.kind == "dense" else (stage.index - 1) * stage.steps
        return lambda step: parallel.global_batch(batches[offset + step], self.batch_sh)

    def _source_state(self, stage: Stage) -> TrainState:
        src = next(s for s in plan(self.config) if s.name == stage.source)
        abstract = self._abstract_state(src, masked=src.kind == "pruned")
        state = final_state(self.workdir / src.name, abstract, {"digest": self.digest, "phase": src.name})
        if state is None:
            raise RuntimeError(f"stage {stage.name} needs the final checkpoint of {src.name}, which is missing "
                               f"from {self.workdir / src.name}")
        return state

    def _init_dense(self) -> TrainState:
        stage = plan(self.config)[0]
        tx = make_optimizer(self._phase_cfg(stage))
        abstract = self._abstract_state(stage, masked=False)
        state_sh = jax.tree.map(lambda a: a.sharding, abstract)
        if self.config.model.init == "scratch":
            def make():
                params, _ = init_params(self.model, jax.random.key(self.config.seed))
                return create_state(params, tx, None, self.config.seed)
            return jax.jit(make, out_shardings=state_sh)()
        if self.config.model.init == "checkpoint":
            params = self._params_from_run(Path(self.config.model.init_path), abstract)
        else:
            from jaxprune.models import load_pretrained  # imported weights (HF GPT-2 safetensors, GGUF)
            _log(f"[dense] loading {self.config.model.init} weights from {self.config.model.init_path}")
            try:
                # HF tensors are read block by block straight into their device shards
                params = load_pretrained(self.config, self.model_cfg, shardings=self.param_sh, progress=self.progress)
            except (ValueError, KeyError, OSError) as e:  # a damaged file, or one that does not fit the preset
                raise pretrained_file_error(self.config, e) from e
        params = jax.device_put(params, self.param_sh)
        # jitted with the state's shardings: a multi-host checkpoint cannot hold host-local arrays (step, rng)
        return jax.jit(lambda p: create_state(p, tx, None, self.config.seed), out_shardings=state_sh)(params)

    def _params_from_run(self, stage_dir: Path, abstract: TrainState):
        """Params of the final checkpoint of a dense stage of another run (e.g. runs/gpt_lambada/dense)."""
        if not (stage_dir / "checkpoints").is_dir():
            raise FileNotFoundError(f"model.init_path {str(stage_dir)!r} is not a stage directory of a jaxprune run "
                                    f"(expected {stage_dir / 'checkpoints'})")
        if stage_dir.name not in {r["stage"] for r in read_results(stage_dir.parent)}:
            raise RuntimeError(f"{stage_dir} is not finished ({stage_dir.parent / RESULTS} has no "
                               f"{stage_dir.name!r} row): wait for that run's stage to end")
        state = final_state(stage_dir, abstract)
        if state is None:
            from jaxprune.training.checkpoint import CheckpointError
            raise CheckpointError(f"{stage_dir / 'checkpoints'} holds no finished checkpoint")
        return state.params

    def _init_stage(self, stage: Stage) -> TrainState:
        src = self._source_state(stage)
        tx = make_optimizer(self._phase_cfg(stage))
        abstract = self._abstract_state(stage, masked=stage.kind == "pruned")
        state_sh = jax.tree.map(lambda a: a.sharding, abstract)
        masks = src.masks
        params = src.params
        if stage.kind == "pruned":
            if jax.tree.leaves(masks) == []:
                pr = self.config.pruning
                masks = jax.jit(lambda p: sparsity.create_masks(p, pr.include, pr.exclude),
                                out_shardings=jax.tree.map(lambda a: a.sharding, abstract.masks))(params)
            if not stage.gradual:
                rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1000 + stage.index))
                _log(f"[{stage.name}] pruning to {stage.rate:g} ({self.config.pruning.method}, "
                     f"{self.config.pruning.pattern})")
                t0 = time.perf_counter()
                params, masks = jax.block_until_ready(self.prune(params, masks, stage.rate, rng))
                self.prune_seconds[stage.name] = time.perf_counter() - t0
                check_no_empty_layers(masks, f"stage {stage.name} (rate {stage.rate})")
            params = sparsity.apply_masks(params, masks)
        seed = self.config.seed + 7919 * stage.index + (0 if stage.kind == "pruned" else 104729)
        return jax.jit(lambda p, m: create_state(p, tx, m, seed), out_shardings=state_sh)(params, masks)

    def _gradual_hook(self, stage: Stage):
        pr = self.config.pruning
        every = pr.gradual_every
        n = max(1, int(stage.steps * pr.gradual_end_fraction) // every)

        def hook(state: TrainState, step: int) -> TrainState:
            if not bool(sparsity.is_pruning_step(step, begin_step=0, num_prunes=n, frequency=every)):
                return state
            rate = float(sparsity.gradual_rate(step, final_rate=stage.rate, begin_step=0, num_prunes=n,
                                               frequency=every))
            rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), step))
            params, masks = self.prune(state.params, state.masks, rate, rng)
            check_no_empty_layers(masks, f"stage {stage.name} at step {step} (rate {rate:.4g})")
            return state.replace(masks=masks, params=sparsity.apply_masks(params, masks),
                                 opt_state=sparsity.mask_optimizer_state(state.opt_state, masks))
        return hook

    def run_stage(self, stage: Stage) -> dict:
        t0 = time.time()
        phase_cfg = self._phase_cfg(stage)
        abstract = self._abstract_state(stage, masked=stage.kind == "pruned")
        init = self._init_dense if stage.kind == "dense" else (lambda: self._init_stage(stage))
        if self._evaluates_before_finetune(stage):
            init = self._with_before_finetune_eval(stage, init)
        phase = Phase(
            name=stage.name, directory=self.workdir / stage.name, steps=stage.steps,
            train_step=self._train_step(stage, abstract), batch_at=self._batches(stage),
            tokens_per_step=phase_cfg.batch_size * self.seq_len, metrics_file=self.workdir / "metrics.jsonl",
            log_every=phase_cfg.log_every, eval_every=phase_cfg.eval_every,
            checkpoint_every=self.config.checkpoint.every_steps, max_to_keep=self.config.checkpoint.max_to_keep,
            evaluate=self.evaluate, prune=self._gradual_hook(stage) if stage.gradual else None,
            meta={"digest": self.digest}, progress=self.progress, lr_schedule=lr_schedule(phase_cfg),
            tensorboard_dir=self.workdir / "tensorboard" if parallel.is_primary() else None)
        what = {"dense": "pretrain", "pruned": f"prune to {stage.rate:g}, then fine-tune",
                "control": "fine-tune (unpruned)"}[stage.kind]
        if stage.steps:
            _log(f"[{stage.name}] {what} {stage.steps} steps")
        elif stage.kind == "pruned":
            _log(f"[{stage.name}] prune to {stage.rate:g} (no fine-tuning)")
        elif stage.kind == "dense" and self.config.model.init != "scratch":
            _log(f"[dense] the {self.config.model.init} model from {self.config.model.init_path}")
        state = run_phase(phase, init)
        metrics = self.evaluate(state.params, tag=stage.name)
        if parallel.is_primary():
            write_scalars(self.workdir / "tensorboard" / stage.name, stage.steps, metrics, "eval")
        row = self._result_row(stage, state, metrics, time.time() - t0)
        if stage.name in self.prune_seconds:  # wall time of scoring + selection (+ calibration), compile included
            row["prune_seconds"] = round(self.prune_seconds[stage.name], 2)
        if self._evaluates_before_finetune(stage):
            row["metrics_before_finetune"] = json.loads((self.workdir / stage.name / BEFORE_FINETUNE).read_text())
        return row

    def _evaluates_before_finetune(self, stage: Stage) -> bool:
        return bool(self.config.eval.get("before_finetune", False)) and stage.kind == "pruned" \
            and stage.steps > 0 and not stage.gradual

    def _with_before_finetune_eval(self, stage: Stage, init):
        """`init` followed by an evaluation of the freshly pruned model, saved once in STAGE/before_finetune.json
        (a resumed stage prunes again to the same model and finds the file)."""
        path = self.workdir / stage.name / BEFORE_FINETUNE

        def init_and_evaluate() -> TrainState:
            state = init()
            if not path.is_file():
                metrics = self.evaluate(state.params, tag=f"{stage.name}_before_finetune")
                if parallel.is_primary():
                    write_text_atomic(path, json.dumps(metrics))
            return state
        return init_and_evaluate

    def _result_row(self, stage: Stage, state: TrainState, metrics: dict, wall: float) -> dict:
        params = state.params  # counted on device: they may be sharded over hosts
        total = sum(int(np.size(p)) for p in jax.tree.leaves(params))
        nonzero = sum(int(jnp.count_nonzero(p)) for p in jax.tree.leaves(params))
        masks = state.masks
        if not jax.tree.leaves(masks):
            masks = sparsity.create_masks(params, self.config.pruning.include, self.config.pruning.exclude)
        layer = {k: float(v) for k, v in sparsity.sparsity_stats(masks).items()}
        kept, prunable = sparsity.count_masks(masks)
        return {
            "stage": stage.name, "kind": stage.kind, "index": stage.index,
            "target_sparsity": stage.rate, "sparsity": 1.0 - float(kept) / prunable,
            "layer_sparsity": layer, "prunable_params": int(prunable),
            "nonzero_params": nonzero, "total_params": total,
            "finetune_steps": stage.steps if stage.kind != "dense" else 0,
            "finetune_tokens": (stage.steps * self.config.finetune.batch_size * self.seq_len
                                if stage.kind != "dense" else 0),
            "cumulative_finetune_steps": stage.index * self.config.finetune.steps if stage.kind != "dense" else 0,
            "pretrain_steps": self.config.pretrain.steps if self.config.model.init == "scratch" else 0,
            "wall_time_s": round(wall, 2), "metrics": metrics,
        }

    def unigram_ppl(self) -> float:
        """Perplexity of the add-one unigram model of the training tokens on the held-out windows: the
        floor a language model must beat to have learnt anything beyond token frequencies."""
        v = self.tokenizer.get_vocab_size()
        counts = np.bincount(self.train_tokens, minlength=v).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        targets = np.concatenate([parallel.fetch(b)[:, 1:].ravel() for b in self.heldout])  # multi-host: gathered
        return float(np.exp(-logp[targets].mean()))

    def run(self) -> list[dict]:
        """Runs the stages not in results.jsonl yet, holding the workdir lock; SIGTERM stops the run at the
        next step or stage boundary with everything saved (raises Preempted)."""
        if self.read_only:
            raise RuntimeError("this Experiment was opened read_only; it cannot run stages")
        self.workdir.mkdir(parents=True, exist_ok=True)
        lock = workdir_lock.WorkdirLock(self.workdir) if parallel.is_primary() else contextlib.nullcontext()
        with lock, handle_sigterm():
            self._claim_workdir()
            rows = self._run()
            if self._evaluate_missing(rows):
                rows = read_results(self.workdir)
            return rows

    def _run(self) -> list[dict]:
        done = {r["stage"] for r in read_results(self.workdir, repair=parallel.is_primary())}
        stages = plan(self.config)
        for n, stage in enumerate(stages, start=1):
            if stage.name in done:
                continue
            _log(f"stage {n}/{len(stages)}: {stage.name}")
            if preemption_requested():
                raise Preempted(f"stopped by SIGTERM before stage {stage.name}; every finished stage is saved. "
                                f"Rerun the same command to resume.")
            row = self.run_stage(stage)
            row["eval"] = self._eval_settings()
            if stage.kind == "dense":
                row["metrics"]["unigram_ppl"] = self.unigram_ppl()
            if parallel.is_primary():
                append_jsonl(self.workdir / RESULTS, row)
            m = row["metrics"]
            print(f"[{stage.name}] sparsity={row['sparsity']:.4f} "
                  + " ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float)), flush=True)
        return read_results(self.workdir)

    # -- evaluation settings changed on finished stages ------------------------
    def _eval_settings(self) -> dict:
        """The eval.* settings that change a metric's value (not tasks, batch size or before_finetune)."""
        e = self.config.eval
        return {k: e.get(k) for k in ("shots", "max_examples", "heldout_batches", "ppl_windows") if k in e}

    def _row_eval_settings(self, row: dict) -> dict:
        if "eval" in row:
            return row["eval"]
        saved = (self.saved_config or {}).get("config", {}).get("eval", {})  # rows from before rows kept it
        return {k: saved.get(k) for k in self._eval_settings()}

    def _changed_settings(self, row: dict) -> list[str]:
        """The eval.* settings that differ from those `row`'s metrics were computed with, among those that
        matter for them: heldout_batches (held-out), ppl_windows (corpus perplexities), shots and
        max_examples (the other tasks)."""
        from jaxprune.evaluation.perplexity import CORPORA
        old, new = self._row_eval_settings(row), self._eval_settings()
        tasks = {k.split("_")[0] for k in row["metrics"]}
        corpus_tasks = any(k.startswith(tuple(f"{c}_" for c in CORPORA)) for k in row["metrics"])
        other_tasks = any(k.startswith(f"{t}_") for t in self.config.eval.tasks if t != "heldout"
                          and t not in CORPORA for k in row["metrics"])
        matters = {"heldout_batches": "heldout" in tasks, "ppl_windows": corpus_tasks,
                   "shots": other_tasks, "max_examples": other_tasks}
        return [f"eval.{k}: {old.get(k)} -> {new.get(k)}" for k in new if matters.get(k) and old.get(k) != new.get(k)]

    def _evaluate_missing(self, rows: list[dict]) -> bool:
        """Finished stages lacking a configured task's metrics are evaluated on their final checkpoints now
        (appended to eval/evaluations.jsonl, which the report merges); stages evaluated with other eval.*
        settings are named, with the command that re-evaluates them. Returns whether anything was evaluated."""
        done = {r["stage"]: r for r in rows}
        extra: dict[str, set] = {}
        evaluations = self.workdir / EVALUATIONS
        if evaluations.is_file():
            for r in (r for _, r in read_records(evaluations)
                      if isinstance(r, dict) and isinstance(r.get("stage"), str)):
                if r.get("eval", self._eval_settings()) == self._eval_settings():
                    extra.setdefault(r["stage"], set()).update(r.get("metrics", {}))
        evaluated, stale = False, []
        for stage in plan(self.config):
            row = done.get(stage.name)
            if row is None:
                continue
            changed = self._changed_settings(row)
            if changed:
                stale.append(f"{stage.name} ({', '.join(changed)})")
            have = set(row["metrics"]) | extra.get(stage.name, set())
            missing = [t for t in self.config.eval.tasks if t != "heldout" and not any(
                k.startswith(f"{t}_") for k in have)]
            if not missing:
                continue
            _log(f"[{stage.name}] finished before eval.tasks had {', '.join(missing)}: evaluating its final "
                 f"checkpoint on them")
            abstract = self._abstract_state(stage, masked=stage.kind == "pruned")
            state = final_state(self.workdir / stage.name, abstract, {"digest": self.digest, "phase": stage.name})
            if state is None:
                from jaxprune.training.checkpoint import CheckpointError
                raise CheckpointError(f"{self.workdir / stage.name} has no final checkpoint to evaluate")
            metrics = self.evaluate(state.params, tag=f"{stage.name}_extra", tasks=missing)
            metrics = {k: v for k, v in metrics.items() if not k.startswith("heldout_")}
            if parallel.is_primary():
                append_jsonl(self.workdir / EVALUATIONS, {"stage": stage.name, "eval": self._eval_settings(),
                                                          "metrics": metrics})
            evaluated = True
        if stale:
            cmd = self.evaluate_command or "python -m jaxprune.evaluate --config=... --workdir=... --stages=all"
            _log(f"note: finished stages were evaluated with other settings: {'; '.join(stale)}. Their "
                 f"results.jsonl metrics are kept; to re-evaluate them with these settings: {cmd}")
        return evaluated


class _Announced(list):
    """A task list that prints one line as the harness starts each task (with the previous one's time)."""

    def __init__(self, tasks: list[str], tag: str):
        super().__init__(tasks)
        self.tag = tag

    def __iter__(self):
        for i, name in enumerate(list.__iter__(self), start=1):
            t0 = time.perf_counter()
            _log(f"[{self.tag}] task {name} ({i}/{len(self)})")
            yield name
            _log(f"[{self.tag}] task {name} done in {time.perf_counter() - t0:.1f} s")


def check_no_empty_layers(masks: Any, where: str) -> None:
    """Raises PruningError naming every prunable layer whose mask keeps no weight."""
    empty = [path for path, m in leaves_with_paths(masks) if m is not None and not bool(jnp.any(m))]
    if empty:
        raise PruningError(f"{where} leaves no weights in {', '.join(empty)}; lower the rate, use "
                           f"pruning.scope='layerwise', or exclude these layers (pruning.exclude)")


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was started with, rebuilt from WORKDIR/config.json (tuples restored)."""
    from jaxprune.config import default_config

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{workdir} holds no jaxprune run (no config.json)")
    try:
        saved = json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a jaxprune run config: {e}") from None

    def tuples(x: Any) -> Any:
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x

    def merge(node: ml_collections.ConfigDict, values: dict) -> None:
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(node.get(k), ml_collections.ConfigDict):
                merge(node[k], v)
            else:
                with node.unlocked():
                    node[k] = tuples(v)

    config = default_config()
    merge(config, saved)
    return config


def open_stage(config: ml_collections.ConfigDict, workdir: str | Path, name: str) -> tuple["Experiment", Stage]:
    """A read-only Experiment of the run in `workdir` and its finished stage `name` (ConfigError otherwise)."""
    stages = {s.name: s for s in plan(config)}
    if name not in stages:
        raise ConfigError(f"the run in {workdir} has no stage {name!r} (its stages: {', '.join(stages)})")
    exp = Experiment(config, workdir, progress=False, read_only=True)
    if name not in {r["stage"] for r in read_results(exp.workdir)}:
        raise ConfigError(f"stage {name!r} is not finished in {exp.workdir}")
    return exp, stages[name]


def restore_stage(exp: "Experiment", stage: Stage) -> TrainState:
    """The final checkpoint of a finished stage (CheckpointError if it has none)."""
    abstract = exp._abstract_state(stage, masked=stage.kind == "pruned")
    state = final_state(exp.workdir / stage.name, abstract, {"digest": exp.digest, "phase": stage.name})
    if state is None:
        from jaxprune.training.checkpoint import CheckpointError
        raise CheckpointError(f"{exp.workdir / stage.name} has no checkpoint")
    return state


def run(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True,
        evaluate_command: str | None = None) -> list[dict]:
    """Validates the config, then runs (or resumes) every stage; returns the results rows.
    `evaluate_command` is the `jaxprune.evaluate` command printed when finished stages were evaluated with
    other eval settings."""
    exp = Experiment(config, workdir, progress)
    exp.evaluate_command = evaluate_command
    return exp.run()
