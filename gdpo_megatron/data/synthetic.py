"""The synthetic arithmetic task of the embedded CPU recipe: problems, tokenizer, warm-start data.

A problem is "What is 17+25?" with the answer in `<answer>42</answer>`. Generated from a
seed, no download. Train and validation come from disjoint halves of the problem space
(a fixed hash of the operands), so validation never repeats a training problem.

Record: {"id", "task": "synthetic", "prompt", "messages", "answer": "42", "a": 17, "b": 25, "op": "+"}.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Tags and role markers are ordinary (non-special) tokens so that decoding keeps them.
TAG_TOKENS = ["<answer>", "</answer>", "<think>", "</think>", "<|system|>", "<|user|>", "<|assistant|>"]
CHARACTERS = sorted(set(string.digits + string.ascii_letters + string.punctuation + " \n"))
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

DEFAULTS = {"num_train": 20000, "num_val": 256, "max_operand": 99, "ops": "+-", "val_every": 10}


def _is_val(a: int, op: str, b: int, val_every: int) -> bool:
    # A fixed arithmetic hash (not Python's salted hash()): the split is the same on every host.
    return (a * 7919 + b * 104729 + ord(op) * 31) % val_every == 0


def _answer(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def make_record(a: int, op: str, b: int, record_id: str) -> dict:
    prompt = f"What is {a}{op}{b}?"
    return {"id": record_id, "task": "synthetic", "prompt": prompt, "messages": [{"role": "user", "content": prompt}],
            "answer": str(_answer(a, op, b)), "a": a, "b": b, "op": op}


def generate_problems(split: str, seed: int, **options) -> list[dict]:
    """`num_train` / `num_val` records of the split, drawn with `seed` (repeats allowed in train)."""
    opts = {**DEFAULTS, **options}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"data.args: unknown synthetic option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    ops = str(opts["ops"])
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"data.args.ops: use a string of '+', '-', '*', got {ops!r}")
    count = int(opts["num_train"] if split == "train" else opts["num_val"])
    want_val = split != "train"
    rng = random.Random(f"synthetic:{split}:{seed}")
    records = []
    while len(records) < count:
        a, b = rng.randint(0, opts["max_operand"]), rng.randint(0, opts["max_operand"])
        op = rng.choice(ops)
        if _is_val(a, op, b, opts["val_every"]) == want_val:
            records.append(make_record(a, op, b, f"synthetic-{split}-{len(records)}"))
    return records


def build_tokenizer(out_dir: str | Path | None = None):
    """A character-level tokenizer (one token per character, one per tag) with a chat template.

    Returns a `transformers.PreTrainedTokenizerFast`; with `out_dir`, also saves it there
    (tokenizer.json + tokenizer_config.json), loadable with AutoTokenizer.from_pretrained.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + TAG_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    core.add_tokens(TAG_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# Warm-start response styles: good ones, and imperfect ones so RL has something to improve.
WARMSTART_MIX = {"direct": 0.35, "worked": 0.25, "off_by_one": 0.15, "trailing": 0.15, "untagged": 0.10}


def warmstart_response(record: dict, kind: str) -> str:
    a, op, b, answer = record["a"], record["op"], record["b"], int(record["answer"])
    if kind == "direct":  # correct, format, length
        return f"<answer>{answer}</answer>"
    if kind == "worked":  # correct, format, too long
        return f"{a}{op}{b}={answer} <answer>{answer}</answer>"
    if kind == "off_by_one":  # format and length, wrong
        return f"<answer>{answer + (1 if (a + b) % 2 else -1)}</answer>"
    if kind == "trailing":  # correct and short, text after the tag
        return f"<answer>{answer}</answer>!"
    if kind == "untagged":  # no tag at all
        return str(answer)
    raise ValueError(f"unknown warm-start response kind {kind!r}; kinds: {', '.join(WARMSTART_MIX)}")


def warmstart_examples(num: int, seed: int, mix: dict[str, float] | None = None,
                       **options) -> list[dict]:
    """`num` supervised examples {"record", "kind", "response"} over training problems."""
    mix = dict(mix or WARMSTART_MIX)
    problems = generate_problems("train", seed, **{**options, "num_train": num})
    rng = random.Random(f"warmstart:{seed}")
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=num)
    return [{"record": p, "kind": k, "response": warmstart_response(p, k)} for p, k in zip(problems, kinds)]


def write_jsonl(records: Iterable[dict], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
