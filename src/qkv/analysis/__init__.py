"""Where information flows through a model's attention (rollout, flow), what its heads do (ablation), and
``show``: the explorer of all of it, inline in a notebook."""

from qkv.analysis.display import show
from qkv.analysis.flow import attention_flow, attention_rollout, layer_transitions, max_flow
from qkv.analysis.heads import (
    direct_logit_attribution,
    induction_scores,
    logit_lens,
    previous_token_scores,
    repeated_random_tokens,
)
from qkv.analysis.importance import causal_lm_loss, head_importance, rank_correlation
from qkv.analysis.intervene import Edit, apply_edit, head_means, intervene
from qkv.analysis.pixels import (
    made_connectivity,
    pixel_attention,
    pixel_dependence,
    pixel_explorer,
    pixel_maps,
    snail_attention,
)
from qkv.attention.hooks import ActivationCache, HookPoint, hook_points, record

__all__ = [
    "ActivationCache",
    "Edit",
    "HookPoint",
    "attention_flow",
    "attention_rollout",
    "causal_lm_loss",
    "direct_logit_attribution",
    "head_importance",
    "induction_scores",
    "apply_edit",
    "head_means",
    "hook_points",
    "intervene",
    "layer_transitions",
    "logit_lens",
    "made_connectivity",
    "max_flow",
    "pixel_attention",
    "pixel_dependence",
    "pixel_explorer",
    "pixel_maps",
    "previous_token_scores",
    "rank_correlation",
    "record",
    "repeated_random_tokens",
    "show",
    "snail_attention",
]
