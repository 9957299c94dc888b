"""vLLM CPU engine behind the generation interface: greedy parity with transformers, logprobs,
grouping, seeding, and in-place weight refit. One engine for the whole module (start-up ~5-25 s)."""

from __future__ import annotations

import pytest
import torch

from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.generation import SamplingSettings, create_backend, generation_mismatch, pad_logprobs

pytestmark = pytest.mark.slow

EOS = 2
PROMPTS = [[1, 5, 6, 7], [1, 40, 41], [1, 9, 100, 101, 102, 103]]


def make_tiny_llama(path, seed: int = 0):
    """A random Llama with head_dim 64 and a WordLevel tokenizer, saved as an HF checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i + 3 for i in range(253)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=False, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return model


def reference_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    """Argmax decoding with full recomputation each step: an independent reference for the engine."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token == EOS:
                break
    return ids[len(prompt):]


def reference_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    logp = torch.log_softmax(logits[len(prompt) - 1: -1] / temperature, dim=-1)
    return logp.gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1).tolist()


def tiny_recipe(**generation) -> RecipeConfig:
    data = {"generation": {"backend": "vllm", "colocated": False, "cpu_kv_cache_mb": 64, "max_model_len": 256,
                           "max_num_seqs": 16, **generation}}
    return build(RecipeConfig, data)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return path, make_tiny_llama(path)


@pytest.fixture(scope="module")
def backend(tiny_model):
    path, _ = tiny_model
    engine = create_backend(tiny_recipe(refit={"bucket_mb": 0.25}), str(path))
    yield engine
    engine.close()


def mismatch_against(model, rollouts, temperature: float = 1.0) -> dict[str, float]:
    engine, mask = pad_logprobs([r.logprobs for r in rollouts])
    policy, _ = pad_logprobs([reference_logprobs(model, r.prompt_token_ids, r.token_ids, temperature)
                              for r in rollouts])
    return generation_mismatch(engine, policy, mask)


def test_greedy_equals_transformers_and_logprobs_match(tiny_model, backend):
    _, model = tiny_model
    rollouts = backend.generate(PROMPTS, SamplingSettings(n=1, temperature=0.0, max_new_tokens=12))
    assert [r.prompt_index for r in rollouts] == [0, 1, 2]
    for rollout, prompt in zip(rollouts, PROMPTS):
        expected = reference_greedy(model, prompt, 12)
        assert rollout.token_ids == expected
        assert rollout.prompt_token_ids == prompt
        assert rollout.finish_reason == ("stop" if expected[-1] == EOS else "length")
        assert rollout.text.split() == [backend.tokenizer.convert_ids_to_tokens(t) for t in expected if t != EOS]
    assert mismatch_against(model, rollouts)["max"] < 1e-3


def test_n_rollouts_grouped_and_logprobs_follow_temperature(tiny_model, backend):
    _, model = tiny_model
    sampling = SamplingSettings(n=3, temperature=0.7, max_new_tokens=6, seed=11)
    rollouts = backend.generate(PROMPTS[:2], sampling)
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [(p, s) for p in range(2) for s in range(3)]
    for r in rollouts:
        assert r.prompt_token_ids == PROMPTS[r.prompt_index]
        assert 1 <= len(r.token_ids) <= 6 and len(r.logprobs) == len(r.token_ids)
        assert (r.finish_reason == "stop") == (r.token_ids[-1] == EOS and len(r.token_ids) <= 6)
    # Samples of one prompt come from different generators.
    assert len({tuple(r.token_ids) for r in rollouts[:3]}) > 1
    # "processed" logprobs are those of the temperature-scaled distribution the tokens were drawn from.
    assert mismatch_against(model, rollouts, temperature=0.7)["max"] < 1e-3


def test_min_new_tokens_holds_back_stop_tokens_until_reached(tiny_model, backend):
    _, model = tiny_model
    prompt = PROMPTS[0]
    stop_id = reference_greedy(model, prompt, 2)[1]  # greedy's second token: stop there
    early = backend.generate([prompt], SamplingSettings(temperature=0.0, max_new_tokens=6, stop_token_ids=(stop_id,)))
    assert len(early[0].token_ids) == 2 and early[0].token_ids[-1] == stop_id and early[0].finish_reason == "stop"

    held = backend.generate([prompt], SamplingSettings(temperature=0.0, max_new_tokens=6, min_new_tokens=6,
                                                       stop_token_ids=(stop_id,)))[0]
    # Independent reference: argmax with the stop id and EOS masked while fewer than 6 tokens exist.
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            logits[[stop_id, EOS]] = float("-inf")
            ids.append(int(logits.argmax()))
    assert held.token_ids == ids[len(prompt):]
    assert stop_id not in held.token_ids and held.finish_reason == "length"


def test_seeded_sampling_is_reproducible(backend):
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=8, seed=5)
    first = backend.generate(PROMPTS, sampling)
    again = backend.generate(PROMPTS, sampling)
    other = backend.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, top_p=0.9, top_k=50,
                                                       max_new_tokens=8, seed=6))
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.logprobs for r in first] == [r.logprobs for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]


def test_refit_switches_weights_atomically_and_round_trips(tiny_model, backend):
    _, model = tiny_model
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=10)
    before = backend.generate(PROMPTS, greedy)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    # A deterministic update the size of a large optimizer step.
    gen = torch.Generator().manual_seed(3)
    updated = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    stats = backend.update_weights(iter(updated.items()))
    expected_bytes = sum(v.numel() * v.element_size() for v in updated.values())
    assert stats.bytes == expected_bytes and stats.tensors == len(updated)
    assert stats.buckets >= expected_bytes // int(0.25 * 2**20)  # bucket bound respected: many buckets
    assert stats.seconds > 0

    model.load_state_dict(updated)
    after = backend.generate(PROMPTS, greedy)
    for rollout, prompt in zip(after, PROMPTS):
        assert rollout.token_ids == reference_greedy(model, prompt, 10)
    assert mismatch_against(model, after)["max"] < 1e-3
    # The engine really moved: its old outputs are unlikely under the new weights' greedy decode,
    # and the old rollouts' recorded logprobs disagree with the new model.
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
    assert mismatch_against(model, before)["mean"] > 0.05

    # Back to the original weights: the first outputs come back exactly (prefix cache was reset).
    backend.update_weights(iter(original.items()))
    model.load_state_dict(original)
    assert [r.token_ids for r in backend.generate(PROMPTS, greedy)] == [r.token_ids for r in before]


def test_sleep_wake_bookkeeping_cpu_build_without_sleep_mode(backend, tiny_model):
    """The CPU build has no sleep mode (its worker frees nothing), but LLM.sleep / wake_up run through
    vLLM: the executor records the sleeping tags, and the engine refuses work its state forbids."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the same calls free memory; the GPU smoke suite covers them")
    path, model = tiny_model
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=6)
    before = [r.token_ids for r in backend.generate(PROMPTS, greedy)]
    assert backend.sleep(1) == {"weights", "kv_cache"}
    with pytest.raises(RuntimeError, match="asleep"):
        backend.generate(PROMPTS, greedy)
    with pytest.raises(RuntimeError, match="wake\\(tags=\\['weights'\\]\\)"):
        backend.update_weights(iter(model.state_dict().items()))
    assert backend.wake(["weights"]) == {"kv_cache"}
    backend.update_weights(iter(model.state_dict().items()))  # refit with the weights awake, KV still asleep
    with pytest.raises(RuntimeError, match="asleep"):
        backend.generate(PROMPTS, greedy)
    assert backend.wake(["kv_cache"]) == set()
    assert [r.token_ids for r in backend.generate(PROMPTS, greedy)] == before
