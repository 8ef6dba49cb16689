"""lm-eval task files that read the offline data directory (no Hugging Face hub access).

Each YAML mirrors the lm-eval 0.4 task of the same stem without `_local` (same prompt,
target, choices and metrics) but takes its documents from jaxprune's task readers via
`loaders.py` (`custom_dataset`), from `$JAXPRUNE_DATA_DIR` or `--metadata '{"data_dir": ...}'`.
"""

from __future__ import annotations

import os
import socket

# hub-only lm-eval task -> the packaged task that reads the same data from the data directory
LOCAL_ALTERNATIVES = {
    "lambada_openai": "lambada_openai_local",
    "lambada": "lambada_openai_local",
    "hellaswag": "hellaswag_local",
    "storycloze_2016": "storycloze_2016_local",
    "storycloze": "storycloze_2016_local",
    "nq_open": "nq_open_local",
    "webqs": "webqs_local",
    "triviaqa": "triviaqa_local",
    "wikitext": "wikitext_local",
}


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or huggingface.co:443 cannot be reached."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False
