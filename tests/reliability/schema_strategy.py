"""Hypothesis strategies for request bodies, drawn from the ingress's OpenAPI document.

A small translator for the JSON Schema subset msgspec emits (type, enum, anyOf, $ref,
properties/required, items, min/max bounds). hypothesis-jsonschema was tried first: it
does not run with current hypothesis releases and took 0.6 s per example on these
schemas, so 10,000 bodies were out of reach. Each generated body is valid, or broken
on purpose in one way (a required field dropped, a value of the wrong type, an unknown
field, bounds crossed) so the validation paths get exercised too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
NUMBERS = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
TEXT = st.text(max_size=40)


class SchemaStrategies:
    def __init__(self, components: dict[str, Any], models: list[str]) -> None:
        self.components = components
        self.models = models
        self._refs: dict[str, st.SearchStrategy[Any]] = {}

    def of(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """Values valid against ``schema`` (deeply nested refs are cut at ``depth`` 6)."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in self._refs:
                self._refs[name] = st.deferred(lambda: self.of(self.components[name], depth + 1))
            return self._refs[name]
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "anyOf" in schema:
            options = schema["anyOf"]
            if depth > 6:  # prefer the leaves when deep
                options = [o for o in options if "$ref" not in o] or options[:1]
            return st.one_of([self.of(option, depth + 1) for option in options])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            low, high = schema.get("minItems", 0), schema.get("maxItems", 3)
            items = self.of(schema.get("items", {}), depth + 1)
            return st.lists(items, min_size=low, max_size=max(low, min(high, low + 3)))
        if kind == "string":
            return st.text(min_size=schema.get("minLength", 0), max_size=40)
        if kind == "integer":
            return st.integers(schema.get("minimum"), schema.get("maximum"))
        if kind == "number":
            return st.floats(
                schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
            )
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return JSON

    def _object(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        properties: dict[str, Any] = schema.get("properties", {})
        if not properties:
            return st.dictionaries(st.text(max_size=8), JSON, max_size=3)
        required = set(schema.get("required", []))
        fields = {}
        for name, prop in properties.items():
            value = self.of(prop, depth + 1)
            if name == "model":
                value = st.sampled_from(self.models) | value
            fields[name] = value
        optional = [n for n in properties if n not in required]
        return st.fixed_dictionaries(
            {n: fields[n] for n in properties if n in required},
            optional={n: fields[n] for n in optional} if depth < 4 else {},
        )

    def body(self, name: str) -> st.SearchStrategy[Any]:
        """A valid ``name`` or one broken in a single way."""
        valid = self.of({"$ref": f"#/components/schemas/{name}"})
        return valid | valid.flatmap(_broken)


def _broken(value: Any) -> st.SearchStrategy[Any]:
    if not isinstance(value, dict) or not value:
        return JSON
    keys = sorted(value)
    return st.one_of(
        st.sampled_from(keys).map(lambda k: {n: v for n, v in value.items() if n != k}),
        st.tuples(st.sampled_from(keys), JSON | NUMBERS).map(lambda kv: value | {kv[0]: kv[1]}),
        st.tuples(TEXT, JSON).map(lambda kv: value | {kv[0]: kv[1]}),
    )
