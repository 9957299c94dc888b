"""The human-readable form of a Plan."""

from __future__ import annotations

from .memory import GIB
from .feasibility import Plan


def _gib(value: float) -> str:
    return f"{value / GIB:8.1f} GiB"


def format_plan(plan: Plan) -> str:
    lay = plan.layout
    lines = [
        f"recipe   {plan.recipe}",
        f"model    {plan.model} ({plan.params / 1e9:.2f} B parameters)",
        f"devices  {lay.total_devices} x {plan.device}"
        + (f" ({plan.device_gib:.1f} GiB each)" if plan.device_gib else ""),
        f"policy   {lay.policy_devices} devices: tensor {lay.tensor} x pipeline {lay.pipeline} x data {lay.data}, "
        f"{lay.microbatches} micro-batches per mini-batch per rank, sequence {lay.seq_length} tokens",
        f"rollouts {lay.generated_per_step or lay.samples_per_step} generated per step, "
        f"{lay.samples_per_step} trained" + (" (after the group filter)" if lay.generated_per_step
                                             and lay.generated_per_step != lay.samples_per_step else ""),
        f"engines  {lay.engines} x tensor {lay.engine_tensor} "
        + ("(colocated, asleep while training)" if lay.colocated
           else "(separate: a CPU slot each)" if plan.device == "CPU"
           else f"(separate: {lay.generation_devices} devices)"),
    ]
    if plan.training is not None:
        t = plan.training
        lines += ["", f"training memory per GPU ({t.stage} stage, {t.params / 1e9:.2f} B params per GPU)"]
        for label, value in (("weights", t.weights), ("gradients (fp32 main grads)", t.gradients),
                             ("optimizer states", t.optimizer), ("activations", t.activations),
                             ("logits (last stage)", t.logits), ("runtime reserve", t.reserve),
                             ("total", t.total)):
            lines.append(f"  {label:30s}{_gib(value)}")
    if plan.engine is not None:
        e = plan.engine
        lines += ["", "vLLM engine memory per GPU"]
        for label, value in (("budget (memory fraction)", e.budget), ("weights", e.weights),
                             ("reserve (graphs, activations)", e.reserve), ("KV cache", e.kv_cache)):
            lines.append(f"  {label:30s}{_gib(value)}")
        lines.append(f"  {'KV tokens':30s}{e.kv_tokens:>12,d}")
        lines.append(f"  {'sequences of ' + str(e.max_model_len) + ' tokens':30s}{e.sequences:>12,d}")
    peaks = plan.peak_bytes()
    if peaks and plan.device_gib:
        lines += ["", "peak per GPU"]
        for phase, value in peaks.items():
            lines.append(f"  {phase:30s}{_gib(value)}  ({100 * value / (plan.device_gib * GIB):.0f}% of device)")
    if plan.findings:
        lines.append("")
        lines.extend(str(f) for f in plan.findings)
    lines += ["", "FITS" if plan.fits else "DOES NOT FIT"]
    return "\n".join(lines)
