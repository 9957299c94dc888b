"""Lazy, tensor-by-tensor access to an HF safetensors checkpoint (single file or sharded)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch

from gdpo_megatron.config.errors import ConfigError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class HFCheckpointReader:
    """`reader.get(name)` reads one tensor from disk; nothing else is loaded. Use as a context manager."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.dir / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise ConfigError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)")
        self._weight_map = weight_map
        self._stack = ExitStack()
        self._handles: dict[str, object] = {}

    def _handle(self, filename: str):
        from safetensors import safe_open

        if filename not in self._handles:
            self._handles[filename] = self._stack.enter_context(safe_open(str(self.dir / filename), framework="pt"))
        return self._handles[filename]

    def _file_of(self, name: str) -> str:
        if self._weight_map is None:
            return SINGLE_FILE
        if name not in self._weight_map:
            raise KeyError(f"{self.dir / INDEX_FILE}: tensor {name!r} is not in the checkpoint")
        return self._weight_map[name]

    def names(self) -> list[str]:
        if self._weight_map is not None:
            return list(self._weight_map)
        return list(self._handle(SINGLE_FILE).keys())

    def get(self, name: str) -> torch.Tensor:
        handle = self._handle(self._file_of(name))
        if name not in handle.keys():
            raise KeyError(f"{self.dir}: tensor {name!r} is not in the checkpoint")
        return handle.get_tensor(name)

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> "HFCheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
