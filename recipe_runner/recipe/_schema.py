"""JSON Schema for editors, generated from the same pydantic models that validate recipes."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, create_model

from ..stages import STAGES
from ._models import RecipeHeader

# a searched key: a choice list, or a range (the stage's own bounds are checked at load, not by the editor)
SEARCH_VALUE = {
    "anyOf": [
        {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean", "null"]}},
        {
            "type": "object",
            "required": ["low", "high"],
            "additionalProperties": False,
            "properties": {
                "low": {"type": "number"},
                "high": {"type": "number"},
                "step": {"type": "number", "exclusiveMinimum": 0},
                "log": {"type": "boolean"},
            },
        },
    ]
}


def recipe_json_schema() -> dict[str, Any]:
    members = []
    for _name, entry in STAGES.items():
        members.append(entry.config)
    # Union[...] of a runtime tuple: the `X | Y` spelling cannot be built from a list of registered types
    AnyStage = Annotated[Union[tuple(members)], Field(discriminator="type")]  # type: ignore[misc]  # noqa: UP007
    Recipe = create_model(
        "Recipe",
        __base__=RecipeHeader,
        stages=(dict[str, AnyStage], Field(min_length=1, description="stage id -> stage; order is file order")),
    )
    schema = TypeAdapter(Recipe).json_schema(by_alias=True)
    _allow_sweeps(schema)
    schema["$defs"]["SearchValue"] = SEARCH_VALUE
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "recipe-runner recipe (version 1)"
    return schema


def _allow_sweeps(schema: dict) -> None:
    """Any stage key may also be written {sweep: [v1, v2, ...]} or {search: [choices] | {low, high, step, log}}."""
    for name, definition in schema.get("$defs", {}).items():
        props = definition.get("properties", {})
        if "type" not in props or name in ("ModelSpec", "TrackingConfig"):
            continue
        for key, prop in props.items():
            if key in ("type", "from", "method"):
                continue
            props[key] = {
                "anyOf": [
                    dict(prop),
                    {
                        "type": "object",
                        "properties": {"sweep": {"type": "array", "items": dict(prop), "minItems": 1}},
                        "required": ["sweep"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"search": {"$ref": "#/$defs/SearchValue"}},
                        "required": ["search"],
                        "additionalProperties": False,
                    },
                ],
                **({"description": prop["description"]} if "description" in prop else {}),
            }
