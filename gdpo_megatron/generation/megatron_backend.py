"""`generation.backend: megatron`: rollouts from megatron-core's own inference engine.

For hosts without vLLM and for debugging the engine side: tokens come from
`StaticInferenceEngine(legacy=True)` over `GPTInferenceWrapper` + `TextGenerationController`
(the path that runs on CPU with gloo). The rollout logprobs are then recomputed with one
teacher-forced forward over the finished sequences (full vocabulary, padding columns
excluded, logits / temperature), because the legacy controller's own logprobs mix
temperature-scaled and unscaled positions; these are exactly the policy's logprobs, so
the train/generation mismatch of this backend is zero by construction.

Weights: pass the policy's `model_chunks` to generate with the live policy (refit is then a
no-op: the weights are already current); otherwise the backend builds its own chunks from
the HF checkpoint and `update_weights` copies HF-named tensors into them through the
conversion importer.

Seeding: the legacy engine seeds torch once per call, so seeded sampling is reproducible
per call but, unlike vLLM, depends on the batch composition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from .backend import BACKENDS
from .buckets import NamedTensor, tensor_bytes
from .types import RefitStats, Rollout, SamplingSettings, check_grouped


class _TokenizerForMegatron:
    """The small tokenizer surface megatron's text generation controller calls."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        self.eod = hf_tokenizer.eos_token_id
        self.bos = hf_tokenizer.bos_token_id
        self.vocab_size = len(hf_tokenizer)

    def tokenize(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def offsets(self, ids, text):  # only used for segment output, which is not requested
        raise NotImplementedError


class _WallClockEvent:
    """torch.cuda.Event for CPU hosts with timing: the legacy controller always measures time per token."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.t = time.perf_counter()

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_WallClockEvent") -> float:
        return (end.t - self.t) * 1e3  # milliseconds, like CUDA events


@contextlib.contextmanager
def _timing_events_on_cpu():
    """Swap torch.cuda.Event for a wall-clock event during generation when there is no CUDA."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.Event
    torch.cuda.Event = _WallClockEvent
    try:
        yield
    finally:
        torch.cuda.Event = saved


def _truncate_at_stops(tokens: list[int], sampling: SamplingSettings, eos: Optional[int], decode) -> tuple[list[int], bool]:
    """Cut after the first stop token (EOS or `stop_token_ids`) or the token completing a stop string."""
    stop_ids = set(sampling.stop_token_ids) | ({eos} if eos is not None else set())
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: i + 1], True
        if sampling.stop and any(s in decode(tokens[: i + 1]) for s in sampling.stop):
            return tokens[: i + 1], True
    return tokens, False


class MegatronBackend:
    def __init__(self, recipe, model_path: str, *, model_chunks: Optional[list[torch.nn.Module]] = None,
                 max_batch_size: int = 64, max_sequence_length: Optional[int] = None) -> None:
        from transformers import AutoTokenizer

        from gdpo_megatron.policy.model import resolve_model_config, vocab_info

        self.model_path = model_path
        model_cfg = dataclasses.replace(recipe.policy.model, hf_path=model_path)
        self.policy = dataclasses.replace(recipe.policy, model=model_cfg)
        self.hf_tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer = _TokenizerForMegatron(self.hf_tokenizer)
        self.model = resolve_model_config(self.policy)
        self.vocab = vocab_info(self.policy, self.model)
        self.max_batch_size = max_batch_size
        self.max_sequence_length = max_sequence_length or self.model.max_position_embeddings
        self.weight_version = 0
        self.owns_chunks = model_chunks is None
        if model_chunks is None:
            model_chunks = self._build_own_chunks()
        if len(model_chunks) != 1:
            raise ValueError("the megatron generation backend needs one model chunk per rank "
                             "(no virtual pipeline stages); use policy.parallel.virtual_pipeline=null")
        self.chunks = model_chunks

    def _build_own_chunks(self) -> list[torch.nn.Module]:
        from gdpo_megatron.conversion import load_hf_weights
        from gdpo_megatron.distributed.setup import init_distributed
        from gdpo_megatron.policy.model import build_model

        init_distributed(self.policy.parallel)
        chunks = build_model(self.policy, for_inference=True)
        load_hf_weights(chunks, self.model_path, self.policy)
        return chunks

    # ------------------------------------------------------------------ generation
    def _engine(self, seed: Optional[int]):
        from megatron.core.inference.engines import StaticInferenceEngine
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
        from megatron.core.inference.text_generation_controllers.text_generation_controller import (
            TextGenerationController,
        )
        from gdpo_megatron.policy.model import unwrap

        gpt = unwrap(self.chunks[0])
        config = InferenceWrapperConfig(
            hidden_size=self.model.hidden_size,
            params_dtype=next(gpt.parameters()).dtype,
            inference_batch_times_seqlen_threshold=-1,  # never split the prefill into pipelined micro-batches
            padded_vocab_size=self.vocab.padded_vocab_size,
            inference_max_requests=self.max_batch_size,
            inference_max_seq_length=self.max_sequence_length,
        )
        wrapper = GPTInferenceWrapper(gpt, config)
        controller = TextGenerationController(inference_wrapped_model=wrapper, tokenizer=self.tokenizer)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return StaticInferenceEngine(text_generation_controller=controller, max_batch_size=self.max_batch_size,
                                         random_seed=seed if seed is not None else 1234, legacy=True)

    def _mask_padded_vocab(self):
        """Forward hook: padded vocabulary columns (zero weights, logit 0) must never be sampled."""
        from megatron.core import parallel_state as mpu

        from gdpo_megatron.policy.model import unwrap

        real = self.vocab.vocab_size

        def hook(module, inputs, output):
            if not torch.is_tensor(output) or output.shape[-1] * mpu.get_tensor_model_parallel_world_size() != \
                    self.vocab.padded_vocab_size:
                return output
            start = mpu.get_tensor_model_parallel_rank() * output.shape[-1]
            cut = max(0, real - start)
            if cut < output.shape[-1]:
                output = output.clone()
                output[..., cut:] = float("-inf")
            return output

        return unwrap(self.chunks[0]).register_forward_hook(hook)

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingSettings) -> list[Rollout]:
        from megatron.core.inference.inference_request import InferenceRequest
        from megatron.core.inference.sampling_params import SamplingParams as MegatronSampling

        if sampling.min_new_tokens:
            raise ValueError("min_new_tokens: the megatron backend cannot hold back EOS (vllm backend only)")
        longest = max((len(p) for p in prompt_token_ids), default=0)
        if longest + sampling.max_new_tokens > self.max_sequence_length:
            raise ValueError(f"prompt of {longest} tokens + max_new_tokens {sampling.max_new_tokens} exceeds the "
                             f"model's {self.max_sequence_length} positions")
        params = MegatronSampling(
            temperature=sampling.temperature if not sampling.greedy else 1.0,
            top_k=1 if sampling.greedy else max(sampling.top_k, 0),
            top_p=0.0 if sampling.greedy or sampling.top_p >= 1.0 else sampling.top_p,
            num_tokens_to_generate=sampling.max_new_tokens,
            return_log_probs=False,
        )
        requests, keys = [], []
        for p, ids in enumerate(prompt_token_ids):
            for s in range(sampling.n):
                requests.append(InferenceRequest(request_id=str(len(requests)), prompt="", prompt_tokens=list(ids),
                                                 sampling_params=params))
                keys.append((p, s))
        hook = self._mask_padded_vocab()
        try:
            outputs = []
            for start in range(0, len(requests), self.max_batch_size):
                engine = self._engine(None if sampling.seed is None else sampling.seed + start)
                with _timing_events_on_cpu():
                    outputs.extend(engine.generate(inference_requests=requests[start: start + self.max_batch_size]))
        finally:
            hook.remove()

        responses, finished = [], []
        for out in outputs:
            tokens = [int(t) for t in out.generated_tokens.tolist()][: sampling.max_new_tokens]
            tokens, stopped = _truncate_at_stops(tokens, sampling, self.tokenizer.eod, self.hf_tokenizer.decode)
            responses.append(tokens)
            finished.append(stopped)
        logprobs = self.score(prompt_token_ids, keys, responses, sampling)
        rollouts = []
        for (p, s), tokens, stopped, lp in zip(keys, responses, finished, logprobs):
            text = self.hf_tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in sampling.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            rollouts.append(Rollout(prompt_index=p, sample_index=s, prompt_token_ids=list(prompt_token_ids[p]),
                                    token_ids=tokens, logprobs=lp, finish_reason="stop" if stopped else "length",
                                    text=text))
        check_grouped(rollouts, len(prompt_token_ids), sampling.n)
        return rollouts

    @torch.no_grad()
    def score(self, prompts: list[list[int]], keys: list[tuple[int, int]], responses: list[list[int]],
              sampling: SamplingSettings) -> list[list[float]]:
        """log pi(token) of every response token under logits / temperature (1 when greedy)."""
        from gdpo_megatron.policy.model import forward_logits

        temperature = 1.0 if sampling.greedy else sampling.temperature
        sequences = [prompts[p] + r for (p, _), r in zip(keys, responses)]
        width = max(len(s) for s in sequences)
        # Right padding never influences earlier positions of a causal model.
        batch = torch.zeros(len(sequences), width, dtype=torch.long)
        for i, seq in enumerate(sequences):
            batch[i, : len(seq)] = torch.tensor(seq)
        logits = forward_logits(self.chunks, batch, self.vocab.vocab_size)
        if logits is None:  # not the last pipeline stage: the trainer reads rank 0 of the last stage
            return [[0.0] * len(r) for r in responses]
        logp = torch.log_softmax(logits.double() / temperature, dim=-1)
        out = []
        for i, ((p, _), response) in enumerate(zip(keys, responses)):
            start = len(prompts[p])
            idx = torch.tensor(response, dtype=torch.long)
            out.append(logp[i, start - 1: start - 1 + len(response)].gather(1, idx.unsqueeze(1)).squeeze(1).tolist())
        return out

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[NamedTensor]) -> RefitStats:
        """Copy HF-named tensors into the chunks (a no-op stream is fine when they are the policy's own)."""
        from safetensors.torch import save_file

        from gdpo_megatron.conversion import load_hf_weights

        started = time.perf_counter()
        stats = RefitStats()
        weights = {}
        for name, tensor in named_tensors:
            weights[name] = tensor.detach().to("cpu").contiguous()
            stats.tensors += 1
            stats.bytes += tensor_bytes(tensor)
        if weights:
            # The importer reads a safetensors checkpoint; /dev/shm keeps the staging in memory.
            staging_root = "/dev/shm" if Path("/dev/shm").is_dir() else None
            with tempfile.TemporaryDirectory(dir=staging_root, prefix="gdpo-refit-") as staging:
                save_file(weights, str(Path(staging) / "model.safetensors"))
                load_hf_weights(self.chunks, staging, self.policy)
            stats.buckets = 1
        self.weight_version += 1
        stats.weight_version = self.weight_version
        stats.seconds = time.perf_counter() - started
        return stats

    def sleep(self, level: int = 1) -> set[str]:
        raise RuntimeError("the megatron backend shares the policy's memory; there is nothing to put to sleep")

    def wake(self, tags=None) -> set[str]:
        raise RuntimeError("the megatron backend shares the policy's memory; there is nothing to wake")

    def close(self) -> None:
        self.chunks = []


@BACKENDS.register("megatron")
def create_megatron_backend(recipe, model_path: str, *, num_engines: Optional[int] = None,
                            **kwargs: Any) -> MegatronBackend:
    """`num_engines` (what the trainer's engine actor asks for) is always 1 for this backend."""
    return MegatronBackend(recipe, model_path, **kwargs)
