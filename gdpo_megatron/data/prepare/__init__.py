"""`gdpo data prepare NAME --out DIR`: one converter per dataset the shipped recipes use.

Each converter reads the upstream dataset (the Hugging Face hub through `datasets`, or a local
copy with --source), writes project records (docs/data.md) as JSONL with stable ids,
deterministic splits, and `<name>.manifest.json` (sources, settings, counts, dropped rows
and why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gdpo_megatron.registry import Registry

from . import bfcl, code_sets, math_sets, toolrl
from .common import Conversion, SourceError, write_outputs


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    upstream: str            # where the data comes from (hub id or package)
    files: tuple[str, ...]   # what `prepare` writes under --out
    default_out: str         # the directory the shipped recipes read
    default_source: str      # "hf" (the hub) or "package" (shipped in an installed package)
    convert: Callable[[str, float, int], Conversion]
    val_fraction: float = 0.0
    summary: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _add(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


_add(DatasetSpec("toolrl", "tool_calling", "ToolRL's 4k mix (--source its dataset/rlla_4k_raw/rlla_rl.json); "
                 "from the hub: ToolACE + xlam-irrelevance + xLAM rebuilt",
                 ("train.jsonl", "val.jsonl"), "data/tool_calling", "hf", toolrl.convert, val_fraction=0.05,
                 summary="the GDPO paper's tool-calling training data"))
_add(DatasetSpec("bfcl", "tool_calling", "BFCL v4 single-turn (the bfcl-eval package's data)",
                 ("train.jsonl", "val.jsonl"), "data/bfcl", "package", bfcl.convert,
                 summary="train: simple_python, multiple, parallel, parallel_multiple; val: the live_* categories"))
_add(DatasetSpec("deepscaler", "math", "agentica-org/DeepScaleR-Preview-Dataset",
                 ("deepscaler.jsonl", "deepscaler-val.jsonl"), "data/math", "hf", math_sets.convert_deepscaler,
                 val_fraction=0.01, summary="math training problems"))
_add(DatasetSpec("aime24", "math", "HuggingFaceH4/aime_2024", ("aime24.jsonl",), "data/math", "hf",
                 math_sets.convert_aime24, summary="AIME 2024, 30 problems (math validation)"))
_add(DatasetSpec("math500", "math", "HuggingFaceH4/MATH-500", ("math500.jsonl",), "data/math", "hf",
                 math_sets.convert_math500, summary="MATH-500 test problems"))
_add(DatasetSpec("eurus2-code", "code", "PRIME-RL/Eurus-2-RL-Data (ability == code)",
                 ("eurus2_code.jsonl", "eurus2_code-val.jsonl"), "data/code", "hf", code_sets.convert_eurus2_code,
                 val_fraction=0.01, summary="code training problems with stdin or call tests"))
_add(DatasetSpec("codecontests", "code", "deepmind/code_contests (test split)", ("codecontests.jsonl",),
                 "data/code", "hf", code_sets.convert_codecontests, summary="code validation problems"))


def prepare(name: str, out_dir: str | Path, source: Optional[str] = None, val_fraction: Optional[float] = None,
            seed: int = 0) -> Path:
    """Convert dataset `name` into `out_dir`; return the manifest's path."""
    spec = DATASETS.get(name)
    source = source or spec.default_source
    fraction = spec.val_fraction if val_fraction is None else val_fraction
    if not 0.0 <= fraction < 1.0:
        raise SourceError(f"--val-fraction must be in [0, 1), got {fraction}")
    result = spec.convert(None if source == "package" else source, fraction, seed)
    settings = {"source": source, "val_fraction": fraction, "seed": seed, "task": spec.task}
    return write_outputs(result, Path(out_dir), name, settings)


def command_for(path: str) -> Optional[str]:
    """The `gdpo data prepare` command that writes the data file `path`, if one does.

    A file in a dataset's default directory belongs to that dataset; elsewhere, a file name
    only one dataset writes decides (train.jsonl, written by several, then gives no answer).
    """
    file = Path(path)
    specs = [DATASETS.get(name) for name in DATASETS.names()]
    exact = [s for s in specs if file.name in s.files and Path(s.default_out) == file.parent]
    by_name = [s for s in specs if file.name in s.files]
    match = exact or (by_name if len(by_name) == 1 else [])
    return f"gdpo data prepare {match[0].name} --out {file.parent}" if match else None


__all__ = ["DATASETS", "DatasetSpec", "SourceError", "command_for", "prepare"]
