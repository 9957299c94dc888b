"""Demonstrations for a supervised warm start on tool-calling records: each record's reference
calls in the output format the `format` reward checks (docs/rewards.md)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gdpo_megatron.rewards.tool_calling import render_calls


def reference_response(record: dict) -> str:
    """`<think>` naming the tools, then the ground-truth calls (or a `<response>` when none is due)."""
    calls = record.get("tool_calls") or []
    names = sorted({c["name"] for c in calls})
    if not calls:
        return render_calls([], think="None of the tools fits this request.",
                            response="I cannot do that with the available tools.")
    think = f"The request needs {', '.join(names)}; I take the argument values from the question."
    return render_calls(calls, think=think)


def tool_calling_demonstrations(records: Sequence[dict], num: int, seed: int) -> list[tuple[dict, str]]:
    """Up to `num` (record, response) pairs, records drawn without replacement in a seeded order."""
    order = np.random.Generator(np.random.PCG64([seed, 7])).permutation(len(records))[:num]
    return [(records[i], reference_response(records[i])) for i in order.tolist()]
