"""One warm-started tiny model for every end-to-end module of the session."""

from __future__ import annotations

import pytest

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"


@pytest.fixture(scope="session")
def initial_model(tmp_path_factory, repo_root):
    """A briefly warm-started tiny model (60 steps are enough to produce the answer format)."""
    from gdpo_megatron.config import load_recipe
    from gdpo_megatron.data import render_prompt
    from gdpo_megatron.data.synthetic import build_tokenizer, warmstart_examples
    from gdpo_megatron.warmstart import Demonstration, run_warmstart

    recipe = load_recipe(repo_root / RECIPE, ["warmstart.steps=60"])
    tokenizer = build_tokenizer()
    demos = [Demonstration(render_prompt(e["record"], tokenizer), e["response"])
             for e in warmstart_examples(2000, recipe.seed)]
    out = tmp_path_factory.mktemp("initial") / "model"
    run_warmstart(recipe.policy.model, recipe.warmstart, tokenizer, demos, out, recipe.seed, log=lambda _: None)
    return out
