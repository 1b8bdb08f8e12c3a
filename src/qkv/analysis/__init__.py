"""Where information flows through a model's attention (rollout, flow) and what its heads do (ablation)."""

from qkv.analysis.flow import attention_flow, attention_rollout, layer_transitions, max_flow
from qkv.analysis.intervene import intervene

__all__ = ["attention_flow", "attention_rollout", "intervene", "layer_transitions", "max_flow"]
