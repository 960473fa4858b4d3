"""Text -> validated recipe. Public: load_recipe, parse_recipe, Recipe, StageDecl, RecipeError, the search section."""

from ._errors import Location, Problem, RecipeError
from ._load import Recipe, StageDecl, load_recipe, parse_recipe
from ._models import CUSTOM_SOURCE, WEIGHTS_NAME
from ._schema import recipe_json_schema
from ._search import (
    Constraint,
    Objective,
    SearchChoice,
    SearchConfig,
    SearchRange,
    SearchSpace,
    parse_constraint,
    search_subtree,
)

__all__ = [
    "CUSTOM_SOURCE",
    "WEIGHTS_NAME",
    "Constraint",
    "Location",
    "Objective",
    "Problem",
    "Recipe",
    "RecipeError",
    "SearchChoice",
    "SearchConfig",
    "SearchRange",
    "SearchSpace",
    "StageDecl",
    "load_recipe",
    "parse_constraint",
    "parse_recipe",
    "recipe_json_schema",
    "search_subtree",
]
