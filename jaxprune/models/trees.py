"""Parameter trees as flat dicts keyed by path ('h_0/attn/c_attn/kernel'), and back.

The importers and exporters map such paths to file tensor names; `None` leaves (a mask's
unprunable entries) are not leaves to JAX and so do not appear.
"""

from __future__ import annotations

from typing import Any

import jax


def flatten(tree: Any) -> dict[str, Any]:
    """'a/b/c' -> leaf, in tree-flattening order."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """The nested dict of a flat 'a/b/c' -> leaf dict."""
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    return out
