"""The README's config reference names every key of the default config."""

import re

from conftest import ROOT

from jaxprune.config import default_config


def _keys(d, prefix=""):
    for k, v in d.items():
        if hasattr(v, "items"):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_config_key_is_documented():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Config reference"):]
    documented = set(re.findall(r"`([a-z0-9_.…]+)`", table))
    missing = []
    for key in _keys(default_config()):
        group, _, leaf = key.rpartition(".")
        if group in ("pretrain", "finetune") and f"….{leaf}" in documented:
            continue
        if key not in documented:
            missing.append(key)
    assert missing == []
