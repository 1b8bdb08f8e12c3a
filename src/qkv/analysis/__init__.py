"""Where information flows through a model's attention (rollout, flow) and what its heads do (ablation)."""

from qkv.analysis.flow import attention_flow, attention_rollout, layer_transitions, max_flow
from qkv.analysis.intervene import ActivationCache, intervene, layer_modules, record

__all__ = [
    "ActivationCache",
    "attention_flow",
    "attention_rollout",
    "intervene",
    "layer_modules",
    "layer_transitions",
    "max_flow",
    "record",
]
