"""docs/config.md, generated from the config models so that it cannot drift from what ``check-config`` accepts.

    python -m labbridge.config_docs > docs/config.md

Every key of every table comes from :class:`labbridge.config.Config` and the models it holds: its type and
bounds from the annotation, its default from the model, its meaning from the field's docstring (a test
requires one for every key, and that docs/config.md is this module's output).
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from labbridge.config import Config, models_in

INTRO = """# Configuration reference

labbridge reads one TOML file (`labbridge run -c FILE`, `labbridge check-config FILE`). This page lists every
key it accepts; it is generated from the config models (`python -m labbridge.config_docs > docs/config.md`),
and a test fails when it differs from them. `config/example.toml` is a commented example of a site, and
`labbridge/demo.toml` (also `config/demo.toml`) the demo lab of six sites.

`check-config` reports every problem of a file in one run, with its key path
(`instruments[2].transport.port`), what was expected, and the nearest right name for a mistyped key, driver
or site. Numbers and booleans are written without quotes: `"4001"` is refused where a port is expected.
Relative paths (the store, TLS files, file destinations) are taken relative to the config file's folder.
"""


def _in_list(annotation: Any, model: type[BaseModel], listed: bool = False) -> bool:
    """Whether ``model`` is held in ``annotation`` as the items of a list (a TOML array of tables)."""
    if annotation is model:
        return listed
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        args = args[:1]
    return any(_in_list(arg, model, listed or origin is list) for arg in args)


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        min_length = getattr(item, "min_length", None)
        if min_length:
            parts.append(f"at least {min_length} character(s)")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matching `{pattern}`")
    return ", ".join(parts)


def _type(annotation: Any) -> str:
    """The annotation in words: ``number > 0``, ``"e1381" | "raw"``, ``list of strings``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        bounds = _bounds([m for meta in metadata for m in (meta.metadata if isinstance(meta, FieldInfo)
                                                            else [meta])])
        return _type(inner) + (f" ({bounds})" if bounds else "")
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        words = " or ".join(_type(a) for a in members)
        return words + (" (optional)" if len(members) < len(get_args(annotation)) else "")
    if origin is list:
        return f"list of {_plural(get_args(annotation)[0])}"
    if origin is dict:
        return f"table of {_plural(get_args(annotation)[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"table ({annotation.__name__})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _plural(annotation: Any) -> str:
    word = _type(annotation)
    return {"string": "strings", "integer": "integers", "number": "numbers", "boolean": "booleans"}.get(word, word)


def _toml(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(its defaults)"
    if value is None:
        return "(absent)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | list | dict | int | float):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{_toml(field.default_factory())}`"  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{_toml(field.default)}`"


def _cell(text: str) -> str:
    text = text.replace("-\n", "-")  # a word wrapped at its hyphen ("dead-" / "letter") is one word
    return " ".join(text.split()).replace("|", "\\|")


def _tag(model: type[BaseModel]) -> str | None:
    kind = model.model_fields.get("kind")
    if kind is None or get_origin(kind.annotation) is not Literal:
        return None
    return str(get_args(kind.annotation)[0])


def _heading(table: str, array: bool, tag: str | None) -> str:
    if not table:
        return "top level"
    text = f"[[{table}]]" if array else f"[{table}]"
    return text + (f' kind = "{tag}"' if tag else "")


def _sections(model: type[BaseModel], table: str, array: bool, tag: str | None,
              seen: dict[type[BaseModel], str]) -> Iterator[str]:
    heading = _heading(table, array, tag)
    seen[model] = heading
    yield f"## `{heading}`\n"
    doc = (model.__doc__ or "").strip()
    if doc and doc != (BaseModel.__doc__ or "").strip():
        yield " ".join(doc.split("\n\n")[0].split()) + "\n"
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation if not field.metadata else Annotated[(field.annotation, *field.metadata)]
        rows.append(f"| `{name}` | {_cell(_type(annotation))} | {_default(field)} | "
                    f"{_cell(field.description or '')} |")
        members = models_in(field.annotation)
        nested += [(name, field, member, len(members) > 1) for member in members]
    yield "| key | type | default | meaning |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    for name, field, member, union in nested:
        child = f"{table}.{name}" if table else name
        if get_origin(field.annotation) is dict:
            child += ".<key>"
        member_tag = _tag(member) if union else None
        array = _in_list(field.annotation, member)
        if member in seen:
            if _heading(child, array, member_tag) != seen[member]:
                yield f"`{_heading(child, array, member_tag)}` takes the keys of `{seen[member]}`.\n"
            continue
        yield from _sections(member, child, array, member_tag, seen)


def generate() -> str:
    return INTRO + "\n" + "\n".join(_sections(Config, "", False, None, {}))


def undocumented() -> list[str]:
    """Keys without a description (``Model.key``): each must say what it means."""
    out: list[str] = []
    todo: list[type[BaseModel]] = [Config]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.exclude and not (field.description or "").strip():
                out.append(f"{model.__name__}.{name}")
            todo += models_in(field.annotation)
    return sorted(out)


if __name__ == "__main__":
    sys.stdout.write(generate())
