"""HF checkpoint <-> Megatron distributed checkpoint (megatron.core.dist_checkpointing).

A Megatron checkpoint written here is a directory with
    model/             dist_checkpointing of {"model": GPTModel.sharded_state_dict()}
    gdpo_model.json    the resolved `policy.model` section (sizes, family, rope, ...)
    hf/                config.json and tokenizer files of the source checkpoint (when known)
It can be read back at any TP/PP layout (dist_checkpointing reshards). Both directions run
on TP*PP fresh processes; callers need the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.policy import ModelConfig, ParallelConfig, PolicyConfig
from gdpo_megatron.config.schema import build, to_dict
from gdpo_megatron.distributed.spawn import SpawnContext, spawn_local

MODEL_SUBDIR = "model"
META_FILE = "gdpo_model.json"
HF_SUBDIR = "hf"
_HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def sharded_model_state(model_chunks) -> dict:
    from gdpo_megatron.policy.model import unwrap

    if len(model_chunks) != 1:
        raise ConfigError("policy.parallel.virtual_pipeline: checkpoint conversion supports one model chunk per rank")
    return {"model": unwrap(model_chunks[0]).sharded_state_dict()}


def _hf_to_megatron_worker(ctx: SpawnContext, hf_dir: str, out_dir: str, tp: int, pp: int) -> None:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from gdpo_megatron.conversion.importer import load_hf_weights
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.model import build_model, resolve_model_config

    policy = PolicyConfig(model=ModelConfig(hf_path=hf_dir), parallel=ParallelConfig(tensor=tp, pipeline=pp))
    init_distributed(policy.parallel)
    try:
        chunks = build_model(policy)
        load_hf_weights(chunks, hf_dir, policy)
        out = Path(out_dir)
        if dist.get_rank() == 0:
            (out / MODEL_SUBDIR).mkdir(parents=True, exist_ok=True)
            meta = to_dict(resolve_model_config(policy))
            meta["hf_path"] = None
            (out / META_FILE).write_text(json.dumps(meta, indent=2))
            (out / HF_SUBDIR).mkdir(exist_ok=True)
            for name in _HF_SIDE_FILES:
                if (Path(hf_dir) / name).is_file():
                    shutil.copy2(Path(hf_dir) / name, out / HF_SUBDIR / name)
        dist.barrier()
        dist_checkpointing.save(sharded_model_state(chunks), str(out / MODEL_SUBDIR))
    finally:
        destroy_distributed()


def read_model_meta(megatron_dir: str | Path) -> ModelConfig:
    path = Path(megatron_dir) / META_FILE
    if not path.is_file():
        raise ConfigError(f"{megatron_dir}: no {META_FILE}; not a checkpoint written by `gdpo convert hf-to-megatron`")
    return build(ModelConfig, json.loads(path.read_text()), lambda _: str(path))


def _megatron_to_hf_worker(ctx: SpawnContext, megatron_dir: str, out_dir: str, tp: int, pp: int) -> None:
    from megatron.core import dist_checkpointing

    from gdpo_megatron.conversion.exporter import save_hf_checkpoint
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.model import build_model, unwrap

    policy = PolicyConfig(model=read_model_meta(megatron_dir), parallel=ParallelConfig(tensor=tp, pipeline=pp))
    init_distributed(policy.parallel)
    try:
        chunks = build_model(policy, for_inference=True)
        state = dist_checkpointing.load(sharded_model_state(chunks), str(Path(megatron_dir) / MODEL_SUBDIR))
        unwrap(chunks[0]).load_state_dict(state["model"], strict=False)
        hf_side = Path(megatron_dir) / HF_SUBDIR
        save_hf_checkpoint(chunks, policy, out_dir, source_dir=hf_side if (hf_side / "config.json").is_file() else None)
    finally:
        destroy_distributed()


def hf_to_megatron(hf_dir: str | Path, out_dir: str | Path, tp: int = 1, pp: int = 1) -> Path:
    out = Path(out_dir)
    if (out / MODEL_SUBDIR).exists() and any((out / MODEL_SUBDIR).iterdir()):
        raise ConfigError(f"{out / MODEL_SUBDIR} already exists and is not empty")
    spawn_local(_hf_to_megatron_worker, tp * pp, args=(str(hf_dir), str(out), tp, pp))
    return out


def megatron_to_hf(megatron_dir: str | Path, out_dir: str | Path, tp: int = 1, pp: int = 1) -> Path:
    read_model_meta(megatron_dir)  # fail here, not in every child process
    spawn_local(_megatron_to_hf_worker, tp * pp, args=(str(megatron_dir), str(out_dir), tp, pp))
    return Path(out_dir)
