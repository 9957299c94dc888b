"""Compare a converted Megatron model with transformers on the same tokens.

`verify_conversion(hf_dir, tp, pp)` runs the HF model in this process and the Megatron
model on TP*PP fresh gloo/nccl processes, and reports the largest absolute logit
difference and whether greedy next tokens agree. It backs `gdpo convert verify`.

Everything checkable from the directory (config.json, a supported architecture, safetensors
weights, the layout) is checked before any process starts; a failure anywhere raises
`VerifyError` whose message is one line naming the checkpoint and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gdpo_megatron.config.policy import ModelConfig, ParallelConfig, PolicyConfig, PrecisionConfig
from gdpo_megatron.distributed.spawn import SpawnContext, spawn_local


class VerifyError(RuntimeError):
    """`gdpo convert verify` cannot compare this checkpoint; the message is one line."""


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    greedy_agree: bool          # argmax over the vocabulary equal at every position
    positions: int
    hf_greedy: list[int]
    megatron_greedy: list[int]


def policy_for(hf_dir: str | Path, tp: int = 1, pp: int = 1, dtype: str = "fp32") -> PolicyConfig:
    return PolicyConfig(model=ModelConfig(hf_path=str(hf_dir)), parallel=ParallelConfig(tensor=tp, pipeline=pp),
                        precision=PrecisionConfig(dtype=dtype))


def _vocab_size(hf_dir: str | Path) -> int:
    from gdpo_megatron.policy.hf_config import read_config_json

    return int(read_config_json(hf_dir)["vocab_size"])


def default_tokens(hf_dir: str | Path, length: int = 16) -> torch.Tensor:
    """[1, n] int64 ids of a fixed text from the checkpoint's tokenizer when it has a working one,
    else ids 1..length (wrapped into the vocabulary): any in-vocabulary ids exercise the weights."""
    vocab = _vocab_size(hf_dir)
    text = "The answer to the question is: two plus three equals five, because"
    try:
        from transformers import AutoTokenizer

        ids = list(AutoTokenizer.from_pretrained(str(hf_dir))(text)["input_ids"][:length])
    except Exception:  # no (usable) tokenizer files
        ids = []
    # A tokenizer_config.json without its vocabulary files loads, then encodes to nothing.
    if len(ids) < 2 or not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
        ids = [1 + i % max(1, vocab - 1) for i in range(length)]
    return torch.tensor([ids], dtype=torch.long)


def check_checkpoint(hf_dir: str | Path, tp: int = 1, pp: int = 1) -> None:
    """What can be checked before processes start: raises VerifyError naming `hf_dir`."""
    from gdpo_megatron.config.errors import ConfigError
    from gdpo_megatron.parallel_layout import layout_problems, world_problems
    from gdpo_megatron.policy.model import resolve_model_config

    from .hf_reader import HFCheckpointReader

    path = Path(hf_dir)
    if not path.is_dir():
        raise VerifyError(f"{path}: not a directory")
    try:
        policy = policy_for(path, tp, pp)
        model = resolve_model_config(policy)
        HFCheckpointReader(path).close()
    except ConfigError as exc:
        raise VerifyError(_one_line(path, exc)) from None
    problems = world_problems(policy.parallel, tp * pp) + layout_problems(model, policy.parallel)
    if problems:
        raise VerifyError(_one_line(path, problems[0].error()))


def _one_line(path: Path, reason: object) -> str:
    """`reason` (an exception or text) on one line, prefixed with the checkpoint unless it names it."""
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text if str(path) in text else f"{path}: {text}"


def hf_logits(hf_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def _megatron_worker(ctx: SpawnContext, hf_dir: str, tp: int, pp: int, tokens: torch.Tensor, new_tokens: int):
    from gdpo_megatron.conversion.importer import load_hf_weights
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.model import build_model, forward_logits, greedy_generate, vocab_info

    policy = policy_for(hf_dir, tp, pp)
    state = init_distributed(policy.parallel)
    try:
        chunks = build_model(policy, for_inference=True)
        load_hf_weights(chunks, hf_dir, policy)
        vocab = vocab_info(policy).vocab_size
        logits = forward_logits(chunks, tokens, vocab)
        generated = greedy_generate(chunks, tokens, new_tokens, vocab) if new_tokens else None
        if logits is None or state.tp_rank != 0 or state.dp_rank != 0:
            return None
        return {"logits": logits.cpu(), "generated": generated.cpu() if generated is not None else None}
    except Exception as exc:  # reported by the parent as one line, not as a child's traceback
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        destroy_distributed()


def megatron_outputs(hf_dir: str | Path, tokens: torch.Tensor, tp: int = 1, pp: int = 1, new_tokens: int = 0) -> dict:
    """{'logits': [b, s, vocab], 'generated': [b, s + new_tokens] or None} from TP*PP processes."""
    results = spawn_local(_megatron_worker, tp * pp, args=(str(hf_dir), tp, pp, tokens, new_tokens))
    for result in results:
        if result is not None and "error" in result:
            raise VerifyError(_one_line(Path(hf_dir), result["error"]))
    return next(r for r in results if r is not None)


def verify_conversion(hf_dir: str | Path, tp: int = 1, pp: int = 1, tokens: torch.Tensor | None = None) -> VerifyResult:
    """Raises VerifyError (one line, naming the checkpoint) when the comparison cannot run."""
    check_checkpoint(hf_dir, tp, pp)
    tokens = default_tokens(hf_dir) if tokens is None else tokens
    try:
        theirs = hf_logits(hf_dir, tokens)
    except Exception as exc:
        raise VerifyError(_one_line(Path(hf_dir), f"transformers cannot run it: {type(exc).__name__}: {exc}")) from None
    ours = megatron_outputs(hf_dir, tokens, tp, pp)["logits"]
    diff = (ours - theirs).abs().max().item()
    ours_greedy, theirs_greedy = ours.argmax(-1)[0].tolist(), theirs.argmax(-1)[0].tolist()
    return VerifyResult(diff, ours_greedy == theirs_greedy, tokens.shape[1], theirs_greedy, ours_greedy)


def _probe_worker(ctx: SpawnContext, hf_dirs: list[str], tp: int, pp: int, tokens: torch.Tensor,
                  new_tokens: int, export: bool):
    from gdpo_megatron.conversion.exporter import export_hf_weights
    from gdpo_megatron.conversion.importer import load_hf_weights
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.model import build_model, forward_logits, greedy_generate, vocab_info

    state = init_distributed(ParallelConfig(tensor=tp, pipeline=pp))
    results = {}
    try:
        for hf_dir in hf_dirs:
            policy = policy_for(hf_dir, tp, pp)
            chunks = build_model(policy, for_inference=True)
            load_hf_weights(chunks, hf_dir, policy)
            vocab = vocab_info(policy).vocab_size
            logits = forward_logits(chunks, tokens, vocab)
            generated = greedy_generate(chunks, tokens, new_tokens, vocab) if new_tokens else None
            exported = {name: t.clone().cpu() for name, t in export_hf_weights(chunks, policy)} if export else None
            results[hf_dir] = {"logits": None if logits is None else logits.cpu(),
                               "generated": None if generated is None else generated.cpu(),
                               # every rank yields the full export; return it from two ranks to check that
                               "exported": exported if ctx.rank in (0, ctx.world_size - 1) else None}
            del chunks
    finally:
        destroy_distributed()
    return {"rank": state.rank, "tp_rank": state.tp_rank, "pp_rank": state.pp_rank, "models": results}


def probe_conversion(hf_dirs: list[str | Path], tp: int = 1, pp: int = 1, tokens: torch.Tensor | None = None,
                     new_tokens: int = 0, export: bool = True) -> list[dict]:
    """Per rank: {'rank', 'tp_rank', 'pp_rank', 'models': {hf_dir: {'logits', 'generated', 'exported'}}}.

    One set of TP*PP processes converts every checkpoint in `hf_dirs` in turn (they must
    all fit the layout); logits are present on last-stage ranks, exports on ranks 0 and last.
    """
    tokens = torch.arange(1, 17).unsqueeze(0) if tokens is None else tokens
    return spawn_local(_probe_worker, tp * pp, args=([str(d) for d in hf_dirs], tp, pp, tokens, new_tokens, export))
