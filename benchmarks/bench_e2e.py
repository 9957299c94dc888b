"""One RL step end to end: `gdpo train` against TRL's GRPOTrainer on the same CPU, same run.

    python benchmarks/bench_e2e.py [--steps 12] [--skip-from 2] [--threads 2] [--rounds 1]
                                   [--trl-version 1.16.0] [--only gdpo|trl] [--overlap]

The configuration (both sides): a randomly initialized Llama with hidden 256, 4 layers,
4 heads of 64 (ffn 688, about 3.2M parameters), the synthetic task's character-level
tokenizer, 8 prompts x 8 rollouts per step, exactly 16 new tokens (EOS held back until then:
gdpo's `generation.sampling.min_new_tokens`, TRL's `generation_kwargs={"min_new_tokens": 16}`),
temperature 1, the synthetic task's three rewards (correct, format, length), GDPO's per-reward
normalization (TRL: `multi_objective_aggregation="normalize_then_sum"`), one optimizer
update per step, fp32, 2 threads.

Why fixed-length completions: both policies learn, and they learn at different speeds (a
different initialization and loss). With EOS free, TRL's completions fell from 15 to 3 tokens
within 12 steps while gdpo's stayed near 10, so TRL's steps generated and trained on a fraction
of the tokens. Each side reports its mean completion length, and a round whose sides differ by
more than LENGTH_WARN is flagged.

* gdpo: `gdpo train recipes/tiny/synthetic-gdpo-1n2c.yaml` with the overrides below (real
  Ray, vLLM CPU engine, megatron-core on gloo; the model is built from scratch by a
  one-step warm start, i.e. it is still random). Per-phase seconds come from the run's
  metrics.jsonl (`time/*`).
* TRL: this file re-run with `--trl-worker` inside a separate virtual environment that
  the benchmark creates itself (benchmarks/.envs/trl-<version>: pinned TRL, the CPU torch
  wheel of requirements/constraints-cpu.txt, never a CUDA build); HF `generate`, s/step
  from a trainer callback.

Steps before `--skip-from` (start-up, first compilation, allocator warm-up) are reported
separately; the table shows the median of the remaining steps and the ratio. With
`--rounds N` each side is measured N times in the order gdpo, trl, trl, gdpo, ... (a load that
drifts during the invocation then weighs on both), and the ratio of every round is printed with
their median. Wrap it in
the machine's slot lock where one exists (it starts Ray, vLLM and training).

On a virtual machine the host can take CPU time from the guest (steal time, Linux
/proc/stat); each side's run reports the share of the machine's CPU time stolen while it
ran, and a round where either side lost more than STEAL_WARN of it is flagged: its ratio
says more about the host than about the two programs. Steal time misses contention for
memory bandwidth and caches, so each side's run is also bracketed by two fixed probes at
the benchmark's thread count, an fp32 matmul (GFLOP/s) and a 128 MiB copy (GB/s); a round
whose probes of either kind differ by more than SPEED_WARN is flagged too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "requirements" / "constraints-cpu.txt"
ENVS = REPO / "benchmarks" / ".envs"

MODEL = dict(hidden_size=256, num_layers=4, num_attention_heads=4, num_query_groups=4, ffn_hidden_size=688,
             max_position_embeddings=256)
PROMPTS, ROLLOUTS, NEW_TOKENS, LR, SEED = 8, 8, 16, 1e-4, 1234
WEIGHTS = (1.0, 1.0, 1.0)

GDPO_OVERRIDES = [
    # the recipe builds its model from scratch through the warm start: one step keeps it random
    "warmstart.enabled=true", "warmstart.steps=1", "warmstart.batch_size=8", "warmstart.num_examples=64",
    *(f"policy.model.{key}={value}" for key, value in MODEL.items()),
    f"policy.optimizer.lr={LR}",
    f"policy.micro_batch_size={PROMPTS * ROLLOUTS}",
    f"trainer.prompts_per_step={PROMPTS}",
    f"trainer.rollouts_per_prompt={ROLLOUTS}",
    f"generation.sampling.max_new_tokens={NEW_TOKENS}",
    f"generation.sampling.min_new_tokens={NEW_TOKENS}",
    "trainer.validation.every_steps=0",
    "trainer.checkpoint.every_steps=0",
]
STEAL_WARN = 0.05  # share of CPU time stolen by the VM host above which a round is flagged
SPEED_WARN = 0.15  # relative spread of a round's probes (matmul or copy) above which it is flagged
COMPLETION = "completion_tokens"  # mean tokens per completion in a step: the work a step does depends on it
LENGTH_WARN = 0.15  # relative difference of the two sides' median completion length above which a round is flagged
PHASES = ("generation", "rewards", "advantage", "logprobs", "policy_update", "rollout_wait", "refit")


def median_after(values: list[float], skip: int) -> float:
    kept = values[skip:] or values
    return statistics.median(kept)


# ----------------------------------------------------------------------------- machine load

def cpu_times(stat_text: str) -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat's first line (guest time is inside user)."""
    fields = stat_text.splitlines()[0].split()
    if fields[0] != "cpu":
        raise ValueError(f"/proc/stat does not start with the aggregate cpu line: {stat_text[:80]!r}")
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[7], sum(values)


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time the host took between two cpu_times() readings (None: unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def read_cpu_times() -> tuple[int, int] | None:
    try:
        return cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # not Linux: the report says the steal is unknown


def machine_speed(threads: int) -> dict[str, float]:
    """How fast the machine is right now on `threads` threads: fp32 matmul GFLOP/s and copy GB/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        square = torch.randn(768, 768)
        source = torch.randn(2**25)  # 128 MiB: well past the caches
        target = torch.empty_like(source)
        square @ square, target.copy_(source)  # first calls: allocation and kernel selection
        start = time.perf_counter()
        for _ in range(24):
            square @ square
        gflops = 2 * 768**3 * 24 / (time.perf_counter() - start) / 1e9
        start = time.perf_counter()
        for _ in range(8):
            target.copy_(source)
        gbps = 2 * source.numel() * 4 * 8 / (time.perf_counter() - start) / 1e9  # read + write
        return {"gflops": gflops, "gbps": gbps}
    finally:
        torch.set_num_threads(previous)


def relative_spread(values: list[float]) -> float:
    """(largest - smallest) / largest: of a round's probes, or of its sides' completion lengths; 0 with fewer than two."""
    return (max(values) - min(values)) / max(values) if len(values) > 1 else 0.0


def unfair_reasons(results: dict[str, dict], skip: int = 0) -> list[str]:
    """Why one round's ratio is not a fair comparison (empty: nothing seen).

    From each side's steal and probes, and from the work its steps did: both policies learn, and
    the one whose completions got shorter generates and trains on fewer tokens per step.
    """
    reasons = []
    disturbed = [name for name, result in results.items() if (result.get("steal") or 0.0) > STEAL_WARN]
    if disturbed:
        reasons.append(f"the host took more than {100 * STEAL_WARN:.0f}% of the CPU time during "
                       f"{' and '.join(disturbed)}")
    for kind, label in (("gflops", "matmul"), ("gbps", "copy")):
        spread = relative_spread([probe[kind] for result in results.values() for probe in result.get("speed", [])])
        if spread > SPEED_WARN:
            reasons.append(f"the machine's {label} speed varied by {100 * spread:.0f}% (probes above)")
    lengths = {name: median_after([s[COMPLETION] for s in result.get("steps", []) if COMPLETION in s], skip)
               for name, result in results.items() if any(COMPLETION in s for s in result.get("steps", []))}
    if len(lengths) > 1:
        spread = relative_spread(list(lengths.values()))
        if spread > LENGTH_WARN:
            reasons.append("the sides' completions differ by {:.0f}% in length ({}): their steps did unequal work"
                           .format(100 * spread, ", ".join(f"{name} {n:.1f} tokens" for name, n in lengths.items())))
    return reasons


# ----------------------------------------------------------------------------- gdpo side

def run_gdpo(steps: int, threads: int, workdir: Path, overlap: bool = False) -> dict:
    run_dir = workdir / "gdpo-run"
    gdpo = Path(sys.executable).with_name("gdpo")
    command = [str(gdpo) if gdpo.exists() else sys.executable, *([] if gdpo.exists() else ["-m", "gdpo_megatron.cli"]),
               "train", str(REPO / "recipes/tiny/synthetic-gdpo-1n2c.yaml"), *GDPO_OVERRIDES,
               f"trainer.max_steps={steps}", f"trainer.run_dir={run_dir}", "trainer.resume=false",
               f"trainer.overlap_generation={str(overlap).lower()}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"gdpo train failed with exit code {done.returncode}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "time/step" in r]
    return {"wall_s": wall, "steps": [{**{key: value for key, value in r.items() if key.startswith("time/")},
                                       COMPLETION: r["response_len/mean"]} for r in records]}


# ----------------------------------------------------------------------------- TRL side

def ensure_trl_env(version: str) -> Path:
    """benchmarks/.envs/trl-<version> with TRL pinned and the CPU torch wheel (created once)."""
    env = ENVS / f"trl-{version}"
    python = env / "bin" / "python"
    stamp = env / ".bench-ready"
    if not stamp.exists():
        print(f"[bench_e2e] creating {env} (TRL {version}, CPU torch) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS),
                        f"trl=={version}", "torch"], check=True)
        probe = ("import importlib.util, torch, trl; "
                 "assert '+cpu' in torch.__version__, torch.__version__; "
                 "assert importlib.util.find_spec('torchvision') is None, 'torchvision was pulled in'; "
                 "print(trl.__version__, torch.__version__)")
        subprocess.run([str(python), "-c", probe], check=True)
        stamp.write_text(version)
    return python


def run_trl(version: str, steps: int, threads: int, workdir: Path) -> dict:
    python = ensure_trl_env(version)
    out = workdir / "trl.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run([str(python), __file__, "--trl-worker", str(out), "--steps", str(steps),
                           "--threads", str(threads)], env=env, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the TRL run failed with exit code {done.returncode}")
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def trl_worker(out: Path, steps: int, threads: int, workdir: Path) -> None:
    """Runs inside the TRL environment: GRPOTrainer on the configuration above."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gdpo_megatron.data.synthetic import build_tokenizer, generate_problems
    from gdpo_megatron.rewards.synthetic import synthetic_correct, synthetic_format, synthetic_length

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=MODEL["hidden_size"],
                         intermediate_size=MODEL["ffn_hidden_size"], num_hidden_layers=MODEL["num_layers"],
                         num_attention_heads=MODEL["num_attention_heads"],
                         num_key_value_heads=MODEL["num_query_groups"],
                         max_position_embeddings=MODEL["max_position_embeddings"], tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    records = generate_problems("train", SEED)
    dataset = Dataset.from_list([{"prompt": r["messages"], "record": json.dumps(r)} for r in records])

    def reward(fn):
        def score(prompts, completions, record, completion_ids=None, **_):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(t) for t in texts]
            return [fn(json.loads(r), text, n) for r, text, n in zip(record, texts, lengths)]
        score.__name__ = fn.__name__
        return score

    times: list[float] = []
    lengths: list[float] = []  # mean completion tokens per step (logging_steps=1: one log per step)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    args = GRPOConfig(output_dir=str(workdir / "trl-run"), max_steps=steps, learning_rate=LR,
                      per_device_train_batch_size=PROMPTS * ROLLOUTS, num_generations=ROLLOUTS,
                      max_completion_length=NEW_TOKENS, temperature=1.0, use_cpu=True, bf16=False,
                      multi_objective_aggregation="normalize_then_sum", reward_weights=list(WEIGHTS),
                      generation_kwargs={"min_new_tokens": NEW_TOKENS},
                      logging_steps=1, report_to="none", save_strategy="no", seed=SEED,
                      dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset,
                          reward_funcs=[reward(synthetic_correct), reward(synthetic_format), reward(synthetic_length)],
                          callbacks=[StepTimer()])
    trainer.train()
    import trl

    if len(lengths) != len(times):
        raise SystemExit(f"TRL logged completion lengths for {len(lengths)} of {len(times)} steps")
    out.write_text(json.dumps({"steps": [{"time/step": t, COMPLETION: n} for t, n in zip(times, lengths)],
                               "trl": trl.__version__,
                               "torch": torch.__version__,
                               "parameters": sum(p.numel() for p in model.parameters())}))


# ----------------------------------------------------------------------------- report

def round_order(rounds: int, only: str | None) -> list[str]:
    """Which side runs when: ABBA... so that a load drift during the invocation hits both alike."""
    sides = [only] if only else ["gdpo", "trl"]
    order: list[str] = []
    for r in range(rounds):
        order.extend(sides if r % 2 == 0 else sides[::-1])
    return order


def _report_round(results: dict[str, dict], skip: int, threads: int, skip_from: int, steps: int,
                  overlap: bool) -> None:
    print(f"\none RL step, {PROMPTS} prompts x {ROLLOUTS} rollouts, {NEW_TOKENS} new tokens, random "
          f"Llama h{MODEL['hidden_size']} x{MODEL['num_layers']} layers, {threads} threads; "
          f"median of steps {skip_from}..{steps}"
          + ("; gdpo with trainer.overlap_generation (one step off-policy), TRL on-policy" if overlap else ""))
    print(f"{'phase':>16} {'gdpo_s':>9} {'trl_s':>9}")
    rows = [(f"time/{p}", f"time/{p}", ".3f") for p in PHASES] + [("time/step", "time/step", ".3f"),
                                                                 ("tokens/completion", COMPLETION, ".1f")]
    for label, key, form in rows:
        cells = []
        for name in ("gdpo", "trl"):
            values = [s[key] for s in results.get(name, {}).get("steps", []) if key in s]
            cells.append(f"{median_after(values, skip):>9{form}}" if values else f"{'-':>9}")
        print(f"{label:>16} {cells[0]} {cells[1]}")
    for name, result in results.items():
        steps_s = [s["time/step"] for s in result["steps"]]
        steal = result.get("steal")
        speed = result.get("speed", [])
        matmul = "/".join(f"{probe['gflops']:.0f}" for probe in speed)
        copy = "/".join(f"{probe['gbps']:.1f}" for probe in speed)
        probes = f"probes before/after: matmul {matmul} GFLOP/s, copy {copy} GB/s"
        print(f"{name}: CPU time stolen by the host {'unknown' if steal is None else f'{100 * steal:.1f}%'}, "
              f"{probes}; "
              f"first step {steps_s[0]:.2f} s, steps before {skip_from}: {sum(steps_s[:skip]):.2f} s, "
              f"start-up and shutdown outside steps {result['wall_s'] - sum(steps_s):.1f} s, process wall "
              f"{result['wall_s']:.1f} s"
              + (f"; TRL {result['trl']}, torch {result['torch']}, {result['parameters'] / 1e6:.2f}M parameters"
                 if name == "trl" else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip-from", type=int, default=2, help="steps 1..N-1 are warm-up, reported apart")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each side this many times, in the order gdpo, trl, trl, gdpo, ...")
    parser.add_argument("--trl-version", default="1.16.0")
    parser.add_argument("--only", choices=("gdpo", "trl"))
    parser.add_argument("--overlap", action="store_true",
                        help="gdpo with trainer.overlap_generation (one step off-policy; TRL stays on-policy)")
    parser.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # run_all.py passes its extra arguments to every benchmark
    if args.trl_worker is not None:
        trl_worker(args.trl_worker, args.steps, args.threads, Path.cwd())
        return 0
    skip = args.skip_from - 1
    rounds: list[dict[str, dict]] = [{} for _ in range(args.rounds)]
    seen = {"gdpo": 0, "trl": 0}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for name in round_order(args.rounds, args.only):
            index = seen[name]
            seen[name] += 1
            print(f"[bench_e2e] round {index + 1}/{args.rounds}: running {name} for {args.steps} steps ...",
                  flush=True)
            runner = ((lambda s, t, w: run_gdpo(s, t, w, args.overlap)) if name == "gdpo"
                      else (lambda s, t, w: run_trl(args.trl_version, s, t, w)))
            workdir = Path(tmp) / f"{name}-{index}"
            workdir.mkdir()
            try:
                before, speed = read_cpu_times(), machine_speed(args.threads)
                rounds[index][name] = runner(args.steps, args.threads, workdir)
                rounds[index][name]["steal"] = stolen_share(before, read_cpu_times())
                rounds[index][name]["speed"] = [speed, machine_speed(args.threads)]
            except SystemExit as failure:  # report it, still measure the other side
                print(f"[bench_e2e] {name}: {failure}", file=sys.stderr, flush=True)
                failed = True
    ratios = []
    for index, results in enumerate(rounds):
        if not results:
            continue
        if args.rounds > 1:
            print(f"\n=== round {index + 1} of {args.rounds}")
        _report_round(results, skip, args.threads, args.skip_from, args.steps, args.overlap)
        if len(results) == 2:
            gdpo_step = median_after([s["time/step"] for s in results["gdpo"]["steps"]], skip)
            trl_step = median_after([s["time/step"] for s in results["trl"]["steps"]], skip)
            rollouts = PROMPTS * ROLLOUTS
            ratios.append(trl_step / gdpo_step)
            print(f"rollouts/s: gdpo {rollouts / gdpo_step:.1f}, TRL {rollouts / trl_step:.1f}; "
                  f"TRL s/step / gdpo s/step = {ratios[-1]:.2f}x (above 1: gdpo is faster)")
            for reason in unfair_reasons(results, skip):
                print(f"WARNING: {reason}; this round's ratio is not a fair comparison")
    if len(ratios) > 1:
        print(f"\nratio per round: {', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    return 1 if failed or not any(rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
