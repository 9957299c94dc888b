"""The metrics contract: every key a run writes to metrics.jsonl, declared exactly once.

Each `Key` names its one producer, how several reports of it combine (the policy ranks of
one step, the resampling rounds of one step) and what it means. docs/observability.md's
key table is generated from `KEYS` (`python -m gdpo_megatron.metrics.docs --write`), and the
end-to-end tests check that a real run writes exactly the keys `expected_keys` lists.

Adding a key is one line in `KEYS`:

    Key("<group>/<name>[/<stat>]", PRODUCER, REDUCTION, "one-line meaning"[, when="<condition>"]),

A pattern segment `{name}` stands for every reward of `algorithm.rewards`, `{gated}` for the
rewards with a condition, `{metric}` for the validation metrics of `data.task`. `when` names
an entry of `CONDITIONS` (the recipe settings under which the key is written).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

MEAN, MAX, MIN, SUM = "mean", "max", "min", "sum"
REDUCTIONS = (MEAN, MAX, MIN, SUM)

# Producers: the one module that writes a key (and where that code runs).
TRAINER = "trainer"
REWARDS = "rewards"
ADVANTAGES = "advantages"
POLICY = "policy"
VALIDATION = "validation"
PRODUCERS = {
    TRAINER: "gdpo_megatron/trainer.py, on the driver",
    REWARDS: "gdpo_megatron/rewards/runner.py, in the reward actor, once per (re)sampling round",
    ADVANTAGES: "gdpo_megatron/algorithms/advantages.py, on every policy rank (whole batch: equal on all ranks)",
    POLICY: "gdpo_megatron/orchestration/policy_worker.py and policy/train_step.py, on every policy rank",
    VALIDATION: "gdpo_megatron/evaluation/metrics.py, called by the trainer on held-out prompts",
}

# When a key is written, as a predicate over the recipe.
CONDITIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "always": ("every step", lambda r: True),
    "dynamic_sampling": ("trainer.dynamic_sampling.enabled", lambda r: r.trainer.dynamic_sampling.enabled),
    "validation": ("steps divisible by trainer.validation.every_steps",
                   lambda r: 0 < r.trainer.validation.every_steps <= r.trainer.max_steps),
    "validation_at_start": ("step 1 with trainer.validation.at_start", lambda r: r.trainer.validation.at_start),
    "mismatch_check": ("steps where generation.mismatch_check.every_steps is due",
                       lambda r: r.generation.mismatch_check.every_steps > 0),
    # Every run that finishes, stops on a signal or on NaN skips saves at its last step.
    "checkpoint": ("steps that saved a checkpoint: every trainer.checkpoint.every_steps, the last step, "
                   "and a step stopped by a signal or by trainer.max_consecutive_nan_skips", lambda r: True),
    "kl": ("algorithm.loss.kl_coef > 0", lambda r: r.algorithm.loss.kl_coef > 0),
    "dual_clip": ("algorithm.loss.type ppo with dual_clip set",
                  lambda r: r.algorithm.loss.type == "ppo" and r.algorithm.loss.dual_clip is not None),
    "gpg": ("algorithm.estimator gpg", lambda r: r.algorithm.estimator == "gpg"),
    "colocated": ("generation.colocated with the vllm backend",
                  lambda r: r.generation.colocated and r.generation.backend == "vllm"),
    "overlap_generation": ("trainer.overlap_generation", lambda r: r.trainer.overlap_generation),
    "group_filter": ("algorithm.group_filter.metric set (GFPO)", lambda r: r.algorithm.group_filter.enabled),
    "group_filter_adaptive": ("algorithm.group_filter.adaptive set",
                              lambda r: r.algorithm.group_filter.adaptive is not None),
}

PLACEHOLDERS = {
    "name": "each reward of algorithm.rewards",
    "gated": "each reward with a condition",
    "metric": "each validation metric of data.task (docs/evaluation.md)",
    "category": "each BFCL category among the held-out prompts (tool-calling records from `gdpo data prepare bfcl`)",
    "bucket": "each difficulty bucket of algorithm.group_filter.adaptive, 0 = hardest",
    "quantile": "each quantile of algorithm.group_filter.adaptive.quantiles, in percent (q25)",
}


@dataclass(frozen=True)
class Key:
    pattern: str
    producer: str
    reduction: str
    meaning: str
    when: str = "always"

    def __post_init__(self) -> None:
        if self.producer not in PRODUCERS:
            raise ValueError(f"metric {self.pattern!r}: unknown producer {self.producer!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"metric {self.pattern!r}: reduction must be one of {REDUCTIONS}")
        if self.when not in CONDITIONS:
            raise ValueError(f"metric {self.pattern!r}: unknown condition {self.when!r}")
        for placeholder in re.findall(r"\{(\w+)\}", self.pattern):
            if placeholder not in PLACEHOLDERS:
                raise ValueError(f"metric {self.pattern!r}: unknown placeholder {{{placeholder}}}")

    @property
    def regex(self) -> re.Pattern:
        parts = re.split(r"(\{\w+\})", self.pattern)
        return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


KEYS: tuple[Key, ...] = (
    Key("step", TRAINER, MAX, "training step, 1-based: the number of updates done; in every record"),
    # rewards of the step's rollouts
    Key("reward/{name}/mean", TRAINER, MEAN, "mean of the reward over the step's rollouts as the advantage stage sees it (conditions applied, NaN left out, overlong-filtered rollouts included)"),
    Key("reward/{gated}/raw_mean", TRAINER, MEAN, "mean of a conditioned reward before its gate (GDPO Eq. 8)"),
    Key("reward/combined/mean", TRAINER, MEAN, "mean of the weighted sum of the rewards (a NaN counts as 0): what the run optimizes"),
    Key("reward_errors/{name}", REWARDS, SUM, "calls of the reward that raised or crashed their worker, over all sampling rounds of the step"),
    Key("reward_timeouts/{name}", REWARDS, SUM, "calls of the reward that overran scoring.timeout_s, over all sampling rounds"),
    Key("reward_nan/{name}", REWARDS, SUM, "rollouts without a value of the reward (not applicable, failed, timed out), over all sampling rounds"),
    Key("reward_refusals/{name}", REWARDS, SUM, "rollouts whose reward refused its input (e.g. an unsupported code-test form); the value is NaN"),
    Key("reward_sandbox_failures/{name}", REWARDS, SUM, "rollouts whose sandbox could not be set up or broke; the value is NaN"),
    Key("reward_out_of_range/{name}", REWARDS, SUM, "rollouts whose reward left its declared range (a bug); the value is NaN"),
    Key("reward_program_timeouts/{name}", REWARDS, SUM, "rollouts whose program overran its time limit inside the sandbox (scored, not NaN)"),
    Key("time/reward_scoring", REWARDS, SUM, "seconds the reward workers spent scoring, over all sampling rounds"),
    # advantage stage (its input: overlong-filtered rollouts are missing there)
    Key("reward/{name}/std", ADVANTAGES, MEAN, "std of the reward over the rollouts the advantage stage scores"),
    Key("reward/{name}/missing_frac", ADVANTAGES, MEAN, "share of rollouts where the reward is NaN at the advantage stage (overlong filtering counts)"),
    Key("reward/{name}/zero_var_group_frac", ADVANTAGES, MEAN, "among groups with a value of the reward, share whose values are all equal: no signal"),
    Key("reward/{gated}/gate_open_frac", ADVANTAGES, MEAN, "share of rollouts whose gate value reaches the condition's threshold"),
    Key("adv/mean", ADVANTAGES, MEAN, "mean advantage over the batch"),
    Key("adv/std", ADVANTAGES, MEAN, "std of the advantages over the batch"),
    Key("adv/min", ADVANTAGES, MIN, "smallest advantage"),
    Key("adv/max", ADVANTAGES, MAX, "largest advantage"),
    Key("adv/zero_frac", ADVANTAGES, MEAN, "share of rollouts with advantage exactly 0"),
    Key("adv/all_missing_frac", ADVANTAGES, MEAN, "share of rollouts without any reward (advantage 0)"),
    Key("adv/resolution_mean", ADVANTAGES, MEAN, "distinct advantage values per group (rounded to 1e-6), averaged over groups"),
    Key("adv/gpg_alpha", ADVANTAGES, MEAN, "GPG's gradient correction B / (B - M)", when="gpg"),
    Key("groups/count", ADVANTAGES, MEAN, "prompt groups in the batch"),
    Key("groups/size_mean", ADVANTAGES, MEAN, "rollouts per group"),
    # the policy update (values are over the whole batch, equal on every rank)
    Key("train/loss", POLICY, MEAN, "loss of the update (policy gradient + KL - entropy terms), averaged over the step's updates"),
    Key("train/pg_loss", POLICY, MEAN, "policy-gradient term of the loss"),
    Key("train/kl_ref", POLICY, MEAN, "token mean of the KL estimator to the reference policy", when="kl"),
    Key("train/entropy", POLICY, MEAN, "token mean entropy of the policy on the sampled responses"),
    Key("train/approx_kl_old", POLICY, MEAN, "token mean of KL(old || new) estimated with k3 (how far the updates moved)"),
    Key("train/ratio_mean", POLICY, MEAN, "token mean of the importance ratio new / old"),
    Key("train/ratio_min", POLICY, MIN, "smallest token importance ratio"),
    Key("train/ratio_max", POLICY, MAX, "largest token importance ratio"),
    Key("train/clip_fraction", POLICY, MEAN, "share of tokens where the clipped branch of the surrogate was taken"),
    Key("train/dual_clip_fraction", POLICY, MEAN, "share of tokens capped by the dual-clip bound", when="dual_clip"),
    Key("train/lr", POLICY, MEAN, "learning rate after the step's last update"),
    Key("train/grad_norm", POLICY, MEAN, "gradient norm before clipping, averaged over the step's updates"),
    Key("train/skipped", POLICY, MEAN, "updates skipped for a non-finite loss or gradient"),
    Key("train/updates", POLICY, MEAN, "optimizer updates applied"),
    Key("train/num_micro_batches", POLICY, MEAN, "micro-batches per update on a rank"),
    Key("train/global_tokens", POLICY, MEAN, "response tokens in the loss normalizer (all data-parallel ranks; overlong-filtered rollouts excluded)"),
    Key("train/global_sequences", POLICY, MEAN, "sequences in the loss normalizer (all data-parallel ranks; overlong-filtered rollouts excluded)"),
    Key("time/advantage", POLICY, MAX, "seconds of the advantage stage on the slowest rank"),
    Key("time/logprobs", POLICY, MAX, "seconds of the separate old (and reference) logprobs forward passes on the slowest rank (0 without KL when the update takes its old logprobs from its own forward)"),
    Key("time/policy_update", POLICY, MAX, "seconds of the optimizer updates on the slowest rank"),
    Key("memory/policy_rss_gb", POLICY, MAX, "resident memory of the largest policy rank, GiB"),
    # train/generation mismatch: one report per data-parallel shard
    Key("mismatch/mean", POLICY, MEAN, "mean over response tokens of |exp(policy logp - engine logp) - 1|, averaged over data-parallel shards", when="mismatch_check"),
    Key("mismatch/max", POLICY, MAX, "largest per-token |exp(dlogp) - 1| of the step", when="mismatch_check"),
    Key("mismatch/abs_log_ratio_mean", POLICY, MEAN, "mean |policy logp - engine logp| over response tokens", when="mismatch_check"),
    Key("mismatch/tokens", POLICY, SUM, "response tokens compared", when="mismatch_check"),
    Key("mismatch/above_warn", TRAINER, SUM, "1 when mismatch/mean exceeded generation.mismatch_check.warn_above (a warning was logged), else 0", when="mismatch_check"),
    # rollouts
    Key("samples", TRAINER, SUM, "rollouts trained on"),
    Key("response_len/mean", TRAINER, MEAN, "mean response length in tokens"),
    Key("response_len/max", TRAINER, MAX, "longest response"),
    Key("response_len/min", TRAINER, MIN, "shortest response"),
    Key("response_len/clip_frac", TRAINER, MEAN, "share of responses cut at generation.sampling.max_new_tokens"),
    Key("response_len/limit", TRAINER, MAX, "generation.sampling.max_new_tokens"),
    Key("dynamic_sampling/dropped_groups", TRAINER, SUM, "groups dropped for zero reward variance, over all rounds", when="dynamic_sampling"),
    Key("dynamic_sampling/rounds", TRAINER, MAX, "sampling rounds the step took", when="dynamic_sampling"),
    # group filter (GFPO): the all-rollout counterparts are reward/*/mean and response_len/mean
    Key("gfpo/retained_frac", TRAINER, MEAN, "share of the sampled rollouts kept for training", when="group_filter"),
    Key("gfpo/response_len/retained_mean", TRAINER, MEAN, "mean response length of the kept rollouts", when="group_filter"),
    Key("gfpo/reward/{name}/retained_mean", TRAINER, MEAN, "mean of the reward over the kept rollouts (conditions applied)", when="group_filter"),
    Key("gfpo/reward/combined/retained_mean", TRAINER, MEAN, "mean combined reward of the kept rollouts", when="group_filter"),
    Key("gfpo/bucket{bucket}/groups", TRAINER, SUM, "groups that fell in the difficulty bucket", when="group_filter_adaptive"),
    Key("gfpo/bucket{bucket}/k", TRAINER, MEAN, "rollouts kept per group in the bucket", when="group_filter_adaptive"),
    Key("gfpo/difficulty/q{quantile}", TRAINER, MEAN, "running quantile of the prompts' mean combined reward (a bucket edge)", when="group_filter_adaptive"),
    Key("gfpo/difficulty/window", TRAINER, MAX, "group means in the running window", when="group_filter_adaptive"),
    Key("data/epoch", TRAINER, MAX, "completed passes over the training prompts"),
    # weight refit
    Key("refit/bytes", TRAINER, SUM, "bytes of weights sent to the engines"),
    Key("refit/buckets", TRAINER, SUM, "buckets they travelled in"),
    # time and throughput
    Key("time/generation", TRAINER, SUM, "seconds in the engine's generate calls, over all sampling rounds"),
    Key("time/rewards", TRAINER, SUM, "seconds the driver waited for rewards (time/reward_scoring + transfer), over all rounds"),
    Key("time/rollout", TRAINER, SUM, "generation + rewards + resampling (with overlap_generation: of this step's rollouts, made during the previous step)"),
    Key("time/rollout_wait", TRAINER, SUM, "seconds the step waited, after its update, for the next step's rollouts to finish", when="overlap_generation"),
    Key("time/train", TRAINER, SUM, "seconds of the policy ranks' train call (advantage, logprobs, updates)"),
    Key("time/refit", TRAINER, SUM, "seconds of the weight refit"),
    Key("time/engine_sleep", TRAINER, SUM, "seconds putting the colocated engines to sleep before training", when="colocated"),
    Key("time/engine_wake", TRAINER, SUM, "seconds waking the colocated engines (weights before the refit, KV cache after)", when="colocated"),
    Key("time/step", TRAINER, SUM, "the whole step, validation and checkpointing excluded"),
    Key("time/checkpoint", TRAINER, SUM, "seconds the driver spent saving the step's checkpoint (policy state, run state, publishing, pruning old ones); not part of time/step", when="checkpoint"),
    Key("throughput/tokens_per_s", TRAINER, MEAN, "prompt + response tokens per second of time/step"),
    Key("memory/driver_rss_gb", TRAINER, MAX, "resident memory of the driver, GiB"),
    # validation
    Key("val/{metric}", VALIDATION, MEAN, "held-out metric of `gdpo eval` after this step's update, one sample per prompt", when="validation"),
    Key("val_at_start/{metric}", VALIDATION, MEAN, "the same before the first update", when="validation_at_start"),
    Key("val/bfcl_accuracy/{category}", VALIDATION, MEAN, "BFCL AST accuracy on the held-out prompts of one BFCL category", when="validation"),
    Key("val_at_start/bfcl_accuracy/{category}", VALIDATION, MEAN, "the same before the first update", when="validation_at_start"),
)


class UndeclaredMetric(KeyError):
    """A metric key that `KEYS` does not declare, or one written by a producer other than its own."""


def _index(keys: Sequence[Key]) -> tuple[dict[str, Key], list[Key]]:
    exact, patterns = {}, []
    for key in keys:
        if key.pattern in exact or any(k.pattern == key.pattern for k in patterns):
            raise ValueError(f"metric {key.pattern!r} is declared twice")
        if "{" in key.pattern:
            patterns.append(key)
        else:
            exact[key.pattern] = key
    return exact, patterns


_EXACT, _PATTERNS = _index(KEYS)


def lookup(name: str) -> Key:
    """The declaration of a concrete key; exact keys win over patterns (`reward/combined/mean`)."""
    if name in _EXACT:
        return _EXACT[name]
    for key in _PATTERNS:
        if key.regex.match(name):
            return key
    raise UndeclaredMetric(f"metric {name!r} is not declared in gdpo_megatron/metrics/keys.py (KEYS)")


def strict() -> bool:
    """Undeclared keys raise when GDPO_STRICT_METRICS=1 (the test suite sets it), else warn once."""
    return os.environ.get("GDPO_STRICT_METRICS", "") not in ("", "0")


_warned: set[str] = set()


def _complain(message: str) -> None:
    if strict():
        raise UndeclaredMetric(message)
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def check(names: Iterable[str], producers: Collection[str] | None = None) -> None:
    """Every key is declared, and (when given) declared for one of `producers`."""
    for name in names:
        try:
            key = lookup(name)
        except UndeclaredMetric as exc:
            _complain(str(exc.args[0]))
            continue
        if producers is not None and key.producer not in producers:
            _complain(f"metric {name!r} is declared for producer {key.producer!r}, "
                      f"but was written by {', '.join(sorted(producers))}")


def _reduce(values: list[float], reduction: str) -> float:
    """NaN in, NaN out, for every reduction (Python's max/min would depend on the order)."""
    if any(math.isnan(v) for v in values):
        return math.nan
    if reduction == SUM:
        return math.fsum(values)
    if reduction == MAX:
        return max(values)
    if reduction == MIN:
        return min(values)
    return math.fsum(values) / len(values)


def merge(reports: Sequence[Mapping[str, Any]], producers: Collection[str] | None = None) -> dict[str, float]:
    """Combine several reports (policy ranks, sampling rounds) key by key with each key's declared reduction.

    A key missing from some reports is reduced over the reports that have it; `None` values are skipped.
    An undeclared key is reduced by its mean (after `check` warned, or raised in strict mode).
    """
    names = sorted({name for report in reports for name in report})
    check(names, producers)
    merged: dict[str, float] = {}
    for name in names:
        values = [float(r[name]) for r in reports if name in r and r[name] is not None]
        if not values:
            continue
        try:
            reduction = lookup(name).reduction
        except UndeclaredMetric:
            reduction = MEAN
        merged[name] = _reduce(values, reduction)
    return merged


def disjoint_union(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """The union of several producers' metrics; a key in two of them is a second producer."""
    out: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            if name in out:
                _complain(f"metric {name!r} is written twice in one step (one producer per key)")
            out[name] = value
    return out


# ----------------------------------------------------------------------------- what a recipe writes

def validation_metric_names(task: str) -> list[str]:
    """The numeric metrics `evaluate_responses` reports for `task` (what `val/{metric}` becomes)."""
    from gdpo_megatron.evaluation import evaluate_responses

    return sorted(k for k, v in evaluate_responses(task, [], []).items() if is_number(v))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expected_keys(recipe: Any) -> set[str]:
    """Every key a run of `recipe` writes at some step (patterns instantiated, conditions applied).

    `{category}` depends on the held-out records rather than the recipe (only BFCL records have
    categories), so its keys are not listed.
    """
    values = {
        "name": [r.name for r in recipe.algorithm.rewards],
        "gated": [r.name for r in recipe.algorithm.rewards if r.condition is not None],
        "metric": validation_metric_names(recipe.data.task),
        "category": [],
        "bucket": [],
        "quantile": [],
    }
    adaptive = recipe.algorithm.group_filter.adaptive
    if adaptive is not None:
        values["bucket"] = [str(b) for b in range(len(adaptive.retain))]
        values["quantile"] = [f"{100 * q:g}" for q in adaptive.quantiles]
    out: set[str] = set()
    for key in KEYS:
        if not CONDITIONS[key.when][1](recipe):
            continue
        names = [key.pattern]
        for placeholder in re.findall(r"\{(\w+)\}", key.pattern):
            names = [n.replace("{" + placeholder + "}", v) for n in names for v in values[placeholder]]
        out.update(names)
    return out


# ----------------------------------------------------------------------------- names readers use

REWARD_COMBINED = "reward/combined/mean"
RESPONSE_LEN_MEAN = "response_len/mean"
_REWARD_MEAN = re.compile(r"^reward/(?P<name>[^/]+)/mean$")


def reward_mean(name: str) -> str:
    """The key of one reward component's batch mean, e.g. `reward/format/mean`."""
    if "/" in name or not name:
        raise ValueError(f"reward name {name!r} must be non-empty and contain no '/'")
    return f"reward/{name}/mean"


def reward_components(keys: Iterable[str]) -> list[str]:
    """Reward component names present among `keys` (excluding `combined`), sorted."""
    names = set()
    for key in keys:
        match = _REWARD_MEAN.match(key)
        if match and match.group("name") != "combined":
            names.add(match.group("name"))
    return sorted(names)
