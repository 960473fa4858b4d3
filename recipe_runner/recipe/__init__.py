"""Text -> validated recipe. Public: load_recipe, parse_recipe, Recipe, StageDecl, RecipeError."""
from ._errors import Location, Problem, RecipeError
from ._load import Recipe, StageDecl, load_recipe, parse_recipe
from ._models import CUSTOM_SOURCE, WEIGHTS_NAME
from ._schema import recipe_json_schema

__all__ = ["CUSTOM_SOURCE", "WEIGHTS_NAME", "Location", "Problem", "Recipe", "RecipeError", "StageDecl", "load_recipe", "parse_recipe", "recipe_json_schema"]
