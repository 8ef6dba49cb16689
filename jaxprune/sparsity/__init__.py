"""Sparsity library: masks, scores, exact selection, schedules, optax wrappers, Wanda and SparseGPT.

Depends only on jax, optax and numpy, so it works with any Flax/optax model.
"""

from jaxprune.sparsity.calibration import CALIBRATED_METHODS, layer_pruner
from jaxprune.sparsity.compact import Widths, compact_gpt2, group_keep, slice_groups
from jaxprune.sparsity.export import load_sparse, save_sparse
from jaxprune.sparsity.groups import (
    GroupMember,
    GroupSpec,
    auto_neuron_groups,
    gpt2_head_groups,
    gpt2_neuron_groups,
    group_scores,
    llama_head_groups,
    llama_neuron_groups,
)
from jaxprune.sparsity.masks import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    apply_masks,
    count_masks,
    create_masks,
    intersect_masks,
    overall_sparsity,
    path_filter,
    sparsity_stats,
    weight_sparsity,
)
from jaxprune.sparsity.schedules import (
    check_rates,
    gradual_rate,
    is_pruning_step,
    iterative,
    one_shot,
)
from jaxprune.sparsity.scores import SCORES, compute_scores, magnitude_score, random_score, wanda_score
from jaxprune.sparsity.select import (
    kth_smallest,
    num_to_prune,
    order_keys,
    prune,
    prune_counts,
    select_smallest,
)
from jaxprune.sparsity.sparsegpt import damped_hessian, inverse_cholesky_upper, sparsegpt_prune_layer
from jaxprune.sparsity.transform import (
    mask_optimizer_state,
    masked_apply_updates,
    masked_update,
)
from jaxprune.sparsity.wanda import prune_per_output, wanda_layer_score, wanda_prune_layer

__all__ = [
    "CALIBRATED_METHODS",
    "DEFAULT_EXCLUDE",
    "Widths",
    "compact_gpt2",
    "group_keep",
    "load_sparse",
    "save_sparse",
    "slice_groups",
    "DEFAULT_INCLUDE",
    "GroupMember",
    "GroupSpec",
    "SCORES",
    "apply_masks",
    "auto_neuron_groups",
    "check_rates",
    "compute_scores",
    "count_masks",
    "create_masks",
    "damped_hessian",
    "gpt2_head_groups",
    "gpt2_neuron_groups",
    "gradual_rate",
    "group_scores",
    "intersect_masks",
    "inverse_cholesky_upper",
    "is_pruning_step",
    "iterative",
    "kth_smallest",
    "layer_pruner",
    "llama_head_groups",
    "llama_neuron_groups",
    "magnitude_score",
    "mask_optimizer_state",
    "masked_apply_updates",
    "masked_update",
    "num_to_prune",
    "one_shot",
    "order_keys",
    "overall_sparsity",
    "path_filter",
    "prune",
    "prune_counts",
    "prune_per_output",
    "random_score",
    "select_smallest",
    "sparsegpt_prune_layer",
    "sparsity_stats",
    "wanda_layer_score",
    "wanda_prune_layer",
    "wanda_score",
    "weight_sparsity",
]
