"""Where information flows through a model's attention: rollout and flow (Abnar & Zuidema 2020)."""

from qkv.analysis.flow import attention_flow, attention_rollout, layer_transitions, max_flow

__all__ = ["attention_flow", "attention_rollout", "layer_transitions", "max_flow"]
