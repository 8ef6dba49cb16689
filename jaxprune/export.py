"""Exports a finished stage of a run for other tools: transformers (hf), llama.cpp (gguf), vLLM (compressed).

    python -m jaxprune.export --workdir=runs/smollm2 --stage=prune_1 --format=hf --out=exports/smollm2_50
    python -m jaxprune.export --workdir=runs/smollm2 --stage=prune_1 --format=gguf --dtype=q8_0 --out=exports/s.gguf
    python -m jaxprune.export --workdir=runs/smollm2 --stage=prune_1 --format=compressed --out=exports/smollm2_ct

compressed: compressed-tensors' sparse-bitmask, or sparse-24-bitmask when the run pruned 2:4
(needs the `compressed` extra, in an environment of its own).

The run's own config (WORKDIR/config.json) is used unless --config names the config file
it was trained with (same flags as `jaxprune.evaluate`). The stage's final checkpoint is
restored, its masks applied (pruned weights exactly 0.0) and written with its tokenizer.
From Python: `jaxprune.models.export_hf.save_hf` / `export_gguf.save_gguf` /
`export_compressed.save_compressed` take any
params + masks + ModelConfig. Exit codes and error lines follow `jaxprune.main`.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxprune import cli

FORMATS = ("hf", "gguf", "compressed")

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (default: WORKDIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_STAGE = flags.DEFINE_string("stage", None, "The finished stage to export, e.g. dense or prune_3.")
_FORMAT = flags.DEFINE_enum("format", "hf", FORMATS, "hf: a transformers directory; gguf: one llama.cpp file; "
                            "compressed: compressed-tensors sparse safetensors.")
_OUT = flags.DEFINE_string("out", None, "Output directory (hf) or .gguf file (gguf; a directory gets model.gguf).")
_DTYPE = flags.DEFINE_string("dtype", "f32", "gguf: f32, f16, bf16 or q8_0.")
_SHARD = flags.DEFINE_string("max_shard_size", "2GB", "hf, compressed: shard size above which the files are split.")


def export_stage(config: ml_collections.ConfigDict, workdir: Path, stage_name: str, fmt: str, out: Path,
                 dtype: str = "f32", max_shard_size: str = "2GB", progress: bool = True) -> list[Path]:
    """Writes the final checkpoint of `stage_name` in `fmt`; returns the files written."""
    from jaxprune.config import ConfigError
    from jaxprune.experiment import open_stage, restore_stage
    from jaxprune.models import export_gguf, export_hf

    exp, stage = open_stage(config, workdir, stage_name)
    cfg = exp.model_cfg
    try:  # what the format cannot express is reported before anything is restored or written
        if fmt == "gguf":
            export_gguf.check_exportable(cfg, dtype)
            export_gguf.pre_tokenizer_name(exp.tokenizer)
            if out.suffix != ".gguf":
                out = out / f"model-{dtype}.gguf"
        else:
            from jaxprune.models.hf import hf_config_from_model
            hf_config_from_model(cfg)
        if fmt == "compressed":
            from jaxprune.models import export_compressed
            export_compressed._library()
            if stage.kind != "pruned":
                raise ValueError(f"stage {stage_name!r} is not pruned: there is nothing to compress (use --format=hf)")
    except ValueError as e:
        raise ConfigError(f"--format={fmt}: {e}") from None
    state = restore_stage(exp, stage)
    masks = state.masks if stage.kind == "pruned" else None
    if fmt == "gguf":
        return [export_gguf.save_gguf(out, state.params, cfg, exp.tokenizer, masks=masks, dtype=dtype,
                                      name=f"{workdir.name}/{stage_name}", progress=progress)]
    if fmt == "compressed":
        from jaxprune.models import export_compressed
        pr = config.pruning
        nm = (pr.n, pr.m) if pr.pattern == "nm" and (pr.n, pr.m) == (2, 4) else None
        return export_compressed.save_compressed(out, state.params, cfg, exp.tokenizer, masks=masks, nm=nm,
                                                 max_shard_size=max_shard_size, progress=progress)
    return export_hf.save_hf(out, state.params, cfg, exp.tokenizer, masks=masks, max_shard_size=max_shard_size,
                             progress=progress)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    with cli.user_errors():
        from jaxprune.experiment import run_config
        workdir = Path(_WORKDIR.value)
        config = _CONFIG.value if _CONFIG.value is not None else run_config(workdir)
        t0 = time.perf_counter()
        files = export_stage(config, workdir, _STAGE.value, _FORMAT.value, Path(_OUT.value), _DTYPE.value,
                             _SHARD.value)
        size = sum(f.stat().st_size for f in files)
        print(f"wrote {len(files)} files, {size / 2**20:.1f} MiB, in {time.perf_counter() - t0:.1f} s: "
              f"{files[0].parent if len(files) > 1 else files[0]}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "stage", "out"])
    app.run(main, flags_parser=cli.flags_parser("config"))
