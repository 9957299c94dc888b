"""Parallel-layout and memory planner: `make_plan(recipe)` -> Plan, `format_plan(plan)` -> text."""

from .gpus import GPU_KINDS, GpuKind, gpu_kind
from .memory import EngineMemory, TrainingLayout, TrainingMemory, engine_memory, training_memory
from .feasibility import Finding, Plan, make_plan
from .report import format_plan

__all__ = ["GPU_KINDS", "EngineMemory", "Finding", "GpuKind", "Plan", "TrainingLayout", "TrainingMemory",
           "engine_memory", "format_plan", "gpu_kind", "make_plan", "training_memory"]
