"""The config's value types: layer lists, device ids, unique tuples, with their JSON
schema (the spec's models use them). Torch-free."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from supervised_sae.layers import EMBEDDINGS_NAME, parse_layer


def _once_each(items: tuple[Any, ...]) -> tuple[Any, ...]:
    if not items:
        raise ValueError("is empty; give at least one")
    twice = [x for k, x in enumerate(items) if x in items[:k]]
    if twice:
        raise ValueError(f"lists {', '.join(map(repr, dict.fromkeys(twice)))} more than once; "
                         "each may appear once")
    return items


def _layer_item(value: Any) -> int | str:
    """A block index (an integer >= 0, or its digits as text) or "emb"."""
    if value == EMBEDDINGS_NAME:
        return EMBEDDINGS_NAME
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return parse_layer(value)
    raise ValueError(f"expected an integer >= 0 or {EMBEDDINGS_NAME!r}")


def _layers(value: Any) -> str | tuple[int | str, ...]:
    if value == "all":
        return "all"
    if not isinstance(value, list | tuple):
        raise ValueError("expected 'all' or a list")
    items = []
    for k, item in enumerate(value):
        try:
            items.append(_layer_item(item))
        except ValueError as err:
            raise ValueError(f"item {k} = {item!r}: {err}") from None
    return _once_each(tuple(items))


def _device_ids(value: Any) -> str | tuple[int | str, ...]:
    if value in ("auto", "cpu"):
        return value
    if not isinstance(value, list | tuple) or not all(
            isinstance(x, int | str) and not isinstance(x, bool) for x in value):
        raise ValueError("expected 'auto', 'cpu' or a list of GPU ids")
    return _once_each(tuple(value))


def _heatmap_layer(value: Any) -> int | str | None:
    return None if value is None else _layer_item(value)


UniqueTuple = AfterValidator(_once_each)
# "all"/"auto" or a list: what JSON and YAML hold (pydantic's own serializer for the
# str | tuple union warns on every dump of a list)
_NAME_OR_LIST = PlainSerializer(lambda v: v if isinstance(v, str) else list(v), when_used="json")
Fraction = Annotated[float, Field(gt=0, lt=1)]
LayerList = Annotated[
    str | tuple[int | str, ...], PlainValidator(_layers), _NAME_OR_LIST,
    WithJsonSchema({"oneOf": [{"const": "all"}, {
        "type": "array", "minItems": 1, "uniqueItems": True,
        "items": {"oneOf": [{"type": "integer", "minimum": 0},
                            {"type": "string", "pattern": "^[0-9]+$"},
                            {"const": EMBEDDINGS_NAME}]}}]})]
DeviceIds = Annotated[
    str | tuple[int | str, ...], PlainValidator(_device_ids), _NAME_OR_LIST,
    WithJsonSchema({"oneOf": [{"enum": ["auto", "cpu"]}, {
        "type": "array", "minItems": 1, "uniqueItems": True,
        "items": {"type": ["integer", "string"]}}]})]
HeatmapLayer = Annotated[
    int | str | None, PlainValidator(_heatmap_layer),
    WithJsonSchema({"oneOf": [{"type": "integer", "minimum": 0}, {"const": EMBEDDINGS_NAME},
                              {"type": "null"}]})]


class Section(BaseModel):
    """A config section: unknown keys refused, values immutable, floats finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)
