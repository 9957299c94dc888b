"""Recipe files written by tests on top of the tiny recipe."""

from __future__ import annotations

import textwrap
from pathlib import Path

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "synthetic-gdpo-1n2c.yaml"


def tiny_recipe_with(tmp_path: Path, body: str) -> Path:
    """<tmp_path>/recipe.yaml: the tiny recipe as defaults, then `body` (YAML, dedented)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"defaults: {TINY}\n" + textwrap.dedent(body))
    return path
