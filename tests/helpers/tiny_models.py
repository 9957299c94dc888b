"""Tiny random HF checkpoints (Llama / Qwen2 / Qwen3) with a small word-level tokenizer.

Shared by the policy, conversion and generation tests:

    from helpers.tiny_models import save_tiny_hf_model
    path = save_tiny_hf_model(tmp_path / "llama", "llama", tie=False)

head_dim is 64 (vLLM's CPU attention supports it; 16 is rejected). Every norm weight and
bias is randomised too (HF initialises them to 1 and 0), so a conversion that drops or
misplaces one of them changes the logits. The tokenizer is a `tokenizers` WordLevel model
over a fixed word list, saved as tokenizer.json with <s>/</s>/<pad>/<unk> and a minimal
chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
_WORDS = (
    "the a an of to and in is it that for on with as was at by be this are or from not but have "
    "what when where which who how why yes no true false answer question user assistant system tool "
    "call function name arguments result value number sum plus minus times equals zero one two three "
    "four five six seven eight nine ten hundred thousand first second third last next before after "
    "think step so then therefore because if else return def print code python test pass fail "
    "good bad correct wrong format length short long reward model policy group mean std advantage"
).split()
_CHARS = list("0123456789abcdefghijklmnopqrstuvwxyz.,:;!?()[]{}+-*/=<>\"'")
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def tokenizer_vocab() -> list[str]:
    seen: dict[str, None] = {}
    for token in SPECIAL_TOKENS + _WORDS + _CHARS:
        seen.setdefault(token, None)
    return list(seen)


def build_tokenizer():
    """A PreTrainedTokenizerFast over `tokenizer_vocab()` (whitespace + punctuation split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(tokenizer_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_hf_config(family: str = "llama", *, tie: bool = False, vocab_size: int = 257, num_layers: int = 2,
                   hidden_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 64,
                   intermediate_size: int = 192, max_position_embeddings: int = 256, **extra):
    """A transformers config of the given family (head_dim may differ from hidden/heads)."""
    import transformers

    classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(classes)}")
    if vocab_size < len(tokenizer_vocab()):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer_vocab())} tokens")
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie,
        rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.05,
        torch_dtype="float32",
    )
    if family == "qwen2":
        kwargs.pop("head_dim")
        if hidden_size // num_heads != head_dim:
            raise ValueError("Qwen2 derives head_dim from hidden_size / num_heads")
    kwargs.update(extra)
    return classes[family](**kwargs)


def save_tiny_hf_model(out_dir: str | Path, family: str = "llama", *, tie: bool = False, seed: int = 0,
                       **config_kwargs) -> Path:
    """Build, randomise and save a tiny model + tokenizer under `out_dir`; returns the path.

    Defaults: 2 layers, hidden 128, 4 query heads / 2 KV heads of size 64, vocab 257
    (odd on purpose: TP=2 needs vocabulary padding). Qwen2 needs hidden_size = 4 * 64.
    """
    import transformers

    if family == "qwen2":
        config_kwargs.setdefault("hidden_size", 256)
    config = tiny_hf_config(family, tie=tie, **config_kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)
    return out
