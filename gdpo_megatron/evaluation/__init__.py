"""Evaluation: per-task metrics (accuracy, pass rate, format rate, Exceed, bug ratio)."""

from .metrics import TASK_MAX_TOKENS, evaluate_responses, format_table

__all__ = ["TASK_MAX_TOKENS", "evaluate_responses", "format_table"]
