"""Compare a converted Megatron model with transformers on the same tokens.

`verify_conversion(hf_dir, tp, pp)` runs the HF model in this process and the Megatron
model on TP*PP fresh gloo/nccl processes, and reports the largest absolute logit
difference and whether greedy next tokens agree. It backs `gdpo convert verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gdpo_megatron.config.policy import ModelConfig, ParallelConfig, PolicyConfig, PrecisionConfig
from gdpo_megatron.distributed.spawn import SpawnContext, spawn_local


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


def default_tokens(hf_dir: str | Path, length: int = 16) -> torch.Tensor:
    """A fixed token sequence from the checkpoint's tokenizer when it has one, else ids 1..length."""
    text = "The answer to the question is: two plus three equals five, because"
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(hf_dir))(text)["input_ids"][:length]
        return torch.tensor([ids])
    except Exception:  # no tokenizer files: any in-vocabulary ids exercise the weights
        return torch.arange(1, length + 1).unsqueeze(0)


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
    finally:
        destroy_distributed()


def megatron_outputs(hf_dir: str | Path, tokens: torch.Tensor, tp: int = 1, pp: int = 1, new_tokens: int = 0) -> dict:
    """{'logits': [b, s, vocab], 'generated': [b, s + new_tokens] or None} from TP*PP processes."""
    results = spawn_local(_megatron_worker, tp * pp, args=(str(hf_dir), tp, pp, tokens, new_tokens))
    return next(r for r in results if r is not None)


def verify_conversion(hf_dir: str | Path, tp: int = 1, pp: int = 1, tokens: torch.Tensor | None = None) -> VerifyResult:
    tokens = default_tokens(hf_dir) if tokens is None else tokens
    ours = megatron_outputs(hf_dir, tokens, tp, pp)["logits"]
    theirs = hf_logits(hf_dir, tokens)
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
