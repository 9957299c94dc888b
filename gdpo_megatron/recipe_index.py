"""The list of runnable recipes under a folder, summarized for `gdpo recipes`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gdpo_megatron.config import ConfigError
from gdpo_megatron.recipe_checks import load_checked_recipe

SHARED_FOLDERS = {"defaults"}   # partial recipes meant to be inherited, not run
SHARED_FILES = {"base.yaml"}


@dataclass
class RecipeRow:
    path: str
    model: str
    task: str
    algorithm: str
    shape: str
    layout: str
    error: str = ""


def default_recipes_dir() -> Path:
    """The project's recipes/ next to the package (editable install), else ./recipes."""
    beside_package = Path(__file__).resolve().parents[1] / "recipes"
    return beside_package if beside_package.is_dir() else Path("recipes")


def recipe_files(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*.yaml")
                  if p.name not in SHARED_FILES and not SHARED_FOLDERS & set(p.relative_to(root).parts[:-1]))


def summarize(path: Path, root: Path) -> RecipeRow:
    relative = str(path.relative_to(root))
    try:
        recipe = load_checked_recipe(path)
    except ConfigError as exc:
        return RecipeRow(relative, "?", "?", "?", "?", "?", error=str(exc))
    cluster, par, gen = recipe.cluster, recipe.policy.parallel, recipe.generation
    model = recipe.policy.model.hf_path or f"{recipe.policy.model.family or 'llama'} (explicit sizes)"
    algorithm = recipe.algorithm.estimator + ("" if recipe.algorithm.loss.type == "ppo" else f"+{recipe.algorithm.loss.type}")
    algorithm += "+gfpo" if recipe.algorithm.group_filter.enabled else ""
    if cluster.gpus_per_node == 0:
        shape = f"{cluster.nodes}n x {cluster.cpu_workers} CPU workers"
    else:
        shape = f"{cluster.nodes}n x {cluster.gpus_per_node} {cluster.gpu_type}"
    layout = f"TP{par.tensor} PP{par.pipeline}"
    if recipe.policy.precision.fp8:
        layout += " FP8"
    layout += f", vLLM {gen.num_engines}xTP{gen.tensor_parallel}" + (" colocated" if gen.colocated else " separate")
    return RecipeRow(relative, model, recipe.data.task, algorithm, shape, layout)


def index_recipes(root: str | Path) -> list[RecipeRow]:
    root = Path(root)
    return [summarize(p, root) for p in recipe_files(root)]
