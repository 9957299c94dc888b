"""HF <-> Megatron weights for the Llama / Qwen2 / Qwen3 families (see docs/policy.md).

- `load_hf_weights(model_chunks, hf_dir, policy)`: stream an HF safetensors checkpoint
  into this rank's chunks, any TP/PP layout.
- `export_hf_weights(model_chunks, policy)`: iterator of (HF name, full tensor); every
  rank takes part and every rank yields every tensor (see exporter.py).
- `save_hf_checkpoint(model_chunks, policy, out_dir)`: rank 0 writes an HF checkpoint.
- `FAMILIES`: HF tensor names per family (a new Llama-shaped family is one entry).
"""

from .exporter import export_hf_weights, save_hf_checkpoint
from .families import FAMILIES, HFNames
from .importer import load_hf_weights

__all__ = ["FAMILIES", "HFNames", "export_hf_weights", "load_hf_weights", "save_hf_checkpoint"]
