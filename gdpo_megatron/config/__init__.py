"""Recipe configuration: YAML with `defaults:` inheritance, overrides, typed validation."""

from .errors import ConfigError
from .recipe import RecipeConfig, build_recipe, load_recipe, recipe_to_yaml

__all__ = ["ConfigError", "RecipeConfig", "build_recipe", "load_recipe", "recipe_to_yaml"]
