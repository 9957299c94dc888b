"""Policy losses (registry). Filled in by the policy work."""

from gdpo_megatron.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")
