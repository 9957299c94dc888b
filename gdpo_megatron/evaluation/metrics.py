"""Per-task evaluation metrics over n samples per prompt (paper conventions).

- accuracy: share of samples judged correct (synthetic/math: correctness 1; code: all tests
  pass; tool calling: tool_correctness = 3), averaged over samples, then over prompts.
- pass_rate (code): mean passed/total tests.  bug_ratio (code): share of samples that hit a
  compile/runtime error, a resource kill or a timeout.
- format_rate (synthetic, tool calling): share with the exact output format.
- exceed: share of samples longer than max_tokens (paper: L = 4000 for math and code).
- pass@1, pass@k (synthetic, math, code; k = samples per prompt): pass@1 is the mean share of
  correct samples, pass@k the share of prompts with at least one correct sample among k.
- bfcl_accuracy (tool calling, records prepared from BFCL): BFCL's own AST checker, overall
  and per category (`bfcl_accuracy/<category>`).
- mean_length: mean response length (tokens when counts are given, else words).
- refused_samples / refused_records: samples a reward refused to score (`RewardRefused`, e.g.
  code tests in a form the sandboxed checker cannot judge), and per refused record id the
  reason. Those samples are NaN and left out of every mean above, so one bad record does not
  stop an evaluation, and the count says how much of the data the numbers do not cover.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.outcomes import RewardRefused

TASK_MAX_TOKENS = {"synthetic": 8, "math": 4000, "code": 4000, "tool_calling": 1024}
TASK_SCORES = {
    "synthetic": {"correct": "synthetic_correct", "format": "synthetic_format"},
    "math": {"correct": "math_correctness"},
    "code": {"pass": "code_pass", "no_bug": "code_no_bug"},
    "tool_calling": {"correctness": "tool_correctness", "format": "format"},
}


def _mean_per_prompt(values: list[list[float]]) -> float:
    """Mean over samples within each prompt, then over prompts (NaNs skipped)."""
    per_prompt = []
    for row in values:
        valid = [v for v in row if not math.isnan(v)]
        if valid:
            per_prompt.append(sum(valid) / len(valid))
    return sum(per_prompt) / len(per_prompt) if per_prompt else math.nan


def word_count(text: str) -> int:
    return len(text.split())


def evaluate_responses(task: str, records: Sequence[dict], responses: Sequence[Sequence[str] | str],
                       num_tokens: Optional[Sequence[Sequence[int] | int]] = None,
                       max_tokens: Optional[int] = None, reward_args: Optional[dict[str, dict]] = None,
                       count_tokens: Callable[[str], int] = word_count, num_workers: int = 1) -> dict:
    """Metrics for `responses[i]` (one string or a list of n samples) answering `records[i]`.

    num_tokens: per-sample token counts; when absent, `count_tokens(response)` (default: words).
    reward_args: extra keyword arguments per reward function name (e.g. code timeouts).
    """
    if task not in TASK_SCORES:
        raise ValueError(f"evaluation: unknown task {task!r}; tasks: {', '.join(TASK_SCORES)}")
    if len(records) != len(responses):
        raise ValueError(f"evaluation: {len(records)} records but {len(responses)} response lists")
    samples = [[r] if isinstance(r, str) else list(r) for r in responses]
    if num_tokens is None:
        tokens = [[count_tokens(s) for s in row] for row in samples]
    else:
        tokens = [[int(t)] if isinstance(t, int) else [int(x) for x in t] for t in num_tokens]
    limit = max_tokens if max_tokens is not None else TASK_MAX_TOKENS[task]
    reward_args = reward_args or {}
    jobs = [(i, j) for i, row in enumerate(samples) for j in range(len(row))]

    def score(job: tuple[int, int]) -> tuple[dict[str, float], Optional[str]]:
        """The sample's values, and why a reward refused it (None when none did)."""
        i, j = job
        values, refusal = {}, None
        for key, fn in TASK_SCORES[task].items():
            try:
                values[key] = float(REWARDS.get(fn)(records[i], samples[i][j], tokens[i][j], **reward_args.get(fn, {})))
            except RewardRefused as exc:
                values[key] = math.nan
                refusal = refusal or f"{fn}: {exc}"
        return values, refusal

    # Code rewards wait on sandboxed subprocesses, so threads overlap them; math-verify relies on
    # SIGALRM, which only works in the main thread, so everything else runs serially.
    if task == "code" and num_workers > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            scored = list(pool.map(score, jobs))
    else:
        scored = [score(job) for job in jobs]

    table: dict[str, list[list[float]]] = {key: [[] for _ in samples] for key in TASK_SCORES[task]}
    refusals: dict[str, str] = {}  # record id -> the first refusal's message, in job order
    for (i, _), (values, refusal) in zip(jobs, scored):
        for key, value in values.items():
            table[key][i].append(value)
        if refusal is not None:
            refusals.setdefault(str(records[i].get("id", f"#{i}")), refusal)
    exceed = [[1.0 if t > limit else 0.0 for t in row] for row in tokens]
    metrics: dict = {"task": task, "num_prompts": len(records), "num_samples": len(jobs),
                     "samples_per_prompt": sorted({len(row) for row in samples}), "max_tokens": limit,
                     "exceed": _mean_per_prompt(exceed),
                     "mean_length": _mean_per_prompt([[float(t) for t in row] for row in tokens]),
                     "refused_samples": sum(refusal is not None for _, refusal in scored),
                     "refused_records": refusals}
    if task in ("synthetic", "math"):
        metrics["accuracy"] = _mean_per_prompt(table["correct"])
    if task == "synthetic":
        metrics["format_rate"] = _mean_per_prompt(table["format"])
    if task == "code":
        metrics["accuracy"] = _mean_per_prompt([[float(v == 1.0) if not math.isnan(v) else v for v in row]
                                                for row in table["pass"]])
        metrics["pass_rate"] = _mean_per_prompt(table["pass"])
        metrics["bug_ratio"] = _mean_per_prompt([[1.0 - v for v in row] for row in table["no_bug"]])
    if task in ("synthetic", "math", "code"):
        correct = table["correct"] if task != "code" else [[float(v == 1.0) if not math.isnan(v) else v for v in row]
                                                            for row in table["pass"]]
        k = min((len(row) for row in samples), default=0)
        metrics["pass@1"] = _mean_per_prompt(correct)
        if k > 1:
            metrics[f"pass@{k}"] = _mean_per_prompt([[float(any(v == 1.0 for v in row[:k]))] for row in correct])
    if task == "tool_calling" and records and all("bfcl" in r for r in records):
        from .bfcl import bfcl_metrics

        metrics.update(bfcl_metrics(list(records), samples))
    if task == "tool_calling":
        metrics["accuracy"] = _mean_per_prompt([[float(v == 3.0) for v in row] for row in table["correctness"]])
        metrics["mean_tool_correctness"] = _mean_per_prompt(table["correctness"])
        metrics["format_rate"] = _mean_per_prompt(table["format"])
    return metrics


def format_table(metrics: dict) -> str:
    """A two-column text table of the numeric metrics (rates as percentages)."""
    rows = []
    for key, value in metrics.items():
        if key == "refused_records":
            if value:
                rows.extend((f"refused {record_id}", reason) for record_id, reason in value.items())
            continue
        if isinstance(value, float):
            shown = "n/a" if math.isnan(value) else (
                f"{100 * value:.2f}%" if key in ("accuracy", "pass_rate", "bug_ratio", "format_rate", "exceed")
                or key.startswith(("pass@", "bfcl_accuracy"))
                else f"{value:.4f}")
        else:
            shown = str(value)
        rows.append((key, shown))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
