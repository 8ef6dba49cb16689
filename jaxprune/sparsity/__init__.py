"""Sparsity library: masks, scores, exact selection, schedules and optax wrappers.

Depends only on jax, optax and numpy, so it works with any Flax/optax model.
"""

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
from jaxprune.sparsity.scores import SCORES, compute_scores, magnitude_score, random_score
from jaxprune.sparsity.select import (
    kth_smallest,
    num_to_prune,
    order_keys,
    prune,
    prune_counts,
    select_smallest,
)
from jaxprune.sparsity.transform import (
    mask_optimizer_state,
    masked_apply_updates,
    masked_update,
)

__all__ = [
    "DEFAULT_EXCLUDE",
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
    "gpt2_head_groups",
    "gpt2_neuron_groups",
    "gradual_rate",
    "group_scores",
    "intersect_masks",
    "is_pruning_step",
    "iterative",
    "kth_smallest",
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
    "random_score",
    "select_smallest",
    "sparsity_stats",
    "weight_sparsity",
]
