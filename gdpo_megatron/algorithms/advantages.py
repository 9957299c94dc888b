"""Advantage estimators (registry). Filled in by the advantage-stage work."""

from gdpo_megatron.registry import Registry

ESTIMATORS: Registry = Registry("advantage estimator")
