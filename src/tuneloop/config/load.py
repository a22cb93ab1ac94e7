"""Load a recipe from YAML, apply `key=value` overrides, and turn validation failures into
one-line messages that name the key and suggest the nearest valid one."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tuneloop.config.recipe import Recipe
from tuneloop.errors import RecipeError

# Fields holding file paths: relative values in a recipe file are relative to that file, so a
# recipe and its data can be moved together. Overrides on the command line stay relative to
# the current directory, as a shell user expects.
ModelT = TypeVar("ModelT", bound=BaseModel)
_PATH_FIELDS = (("data", "train"), ("data", "eval"), ("data", "retrieval", "docs"), ("output_dir",))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `training.learning_rate=1e-4` into (['training', 'learning_rate'], 1e-4).

    A text field (`name`, `model`, `data.system_prompt`, ...) takes the value as written:
    read as YAML, `Intent classifier: answer with the label.` would become a mapping and
    fail validation with a message about types. A value quoted whole ('"..."' or "'...'",
    as sweeps write them) is unquoted, and `null` clears an optional text field. Every other
    field reads the value as YAML (`1e-4`, `true`, `[q_proj,v_proj]`).
    """
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r} has an empty key")
    path = key.split(".")
    kind = _field_kind(path)
    if kind in ("text", "optional text") and not _quoted(raw.strip()):
        if kind == "optional text" and raw.strip() in ("null", "~"):
            return path, None
        return path, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and kind == "other":
        raise RecipeError(
            f"override {text!r}: the value reads as a YAML mapping (it holds ': '); "
            f"quote it whole, e.g. '{key}=\"{raw.strip()}\"'"
        )
    return path, value


def _quoted(raw: str) -> bool:
    return len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"


def _field_kind(path: list[str]) -> str | None:
    """What the recipe schema holds at `path`: 'text' (str), 'optional text' (str | None),
    'section', 'other', or None for a key it does not know (validation names it)."""
    model: type[BaseModel] = Recipe
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if i == len(path) - 1:
                return "section"
            model = annotation
            continue
        if i != len(path) - 1:
            return None
        if annotation is str:
            return "text"
        if isinstance(annotation, types.UnionType) and set(typing.get_args(annotation)) == {
            str,
            type(None),
        }:
            return "optional text"
        return "other"
    return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict, creating sections as needed."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise RecipeError(f"override {text!r}: {dotted} is a value, not a section")
            node = child
        if (
            isinstance(value, str)
            and tuple(path) in _PATH_FIELDS
            and value
            and not value.startswith("dataset:")
        ):
            value = str(Path(value).expanduser().resolve())
        node[path[-1]] = value
    return raw


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] = Recipe) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for key suggestions)."""
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = (
            typing.get_args(annotation)
            if isinstance(annotation, types.UnionType)
            else (annotation,)
        )
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def format_validation_error(
    err: ValidationError, source: str, model: type[BaseModel] = Recipe
) -> str:
    """Render pydantic errors as `source: key: problem` lines, with did-you-mean hints."""
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1], model)
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
                if close:
                    hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)"
                else:
                    hint = f" (valid keys: {', '.join(owner.model_fields)})"
            lines.append(f"{source}: unknown key '{dotted}'{hint}")
        elif item["type"] == "missing":
            lines.append(f"{source}: missing required key '{dotted}'")
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"{source}: {dotted}: {item['msg']}{shown}")
    return "; ".join(lines)


def load_yaml_model(path: str | Path, model: type[ModelT], what: str) -> ModelT:
    """A YAML file validated as `model` (a suite, a continual plan); a TuneloopError that
    names the file when it cannot be read, is not a mapping, or fails validation (one line
    per field, as for recipes)."""
    from tuneloop.errors import TuneloopError

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise TuneloopError(f"{what} {path}: cannot read it: {err}") from None
    if not isinstance(raw, dict):
        raise TuneloopError(f"{what} {path}: expected a mapping of keys")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise TuneloopError(format_validation_error(err, f"{what} {path}")) from None


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a plain dict as a Recipe, raising RecipeError with a readable message."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML file, resolve its relative paths, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}:{where} invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(raw).__name__}")
    base = path.resolve().parent
    for field_path in _PATH_FIELDS:
        node = raw
        for part in field_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value_text = node.get(field_path[-1]) if isinstance(node, dict) else None
        if isinstance(value_text, str) and not value_text.startswith("dataset:"):
            value = Path(value_text).expanduser()
            if not value.is_absolute():
                node[field_path[-1]] = str((base / value).resolve())
    _resolve_reward_functions(raw, base)
    apply_overrides(raw, list(overrides or []))
    data = raw.get("data")
    if isinstance(data, dict) and data.get("train") is None:
        raise RecipeError(
            f"{path}: data.train is not set; give it in the recipe or on the command line "
            "as data.train=PATH"
        )
    return recipe_from_dict(raw, source=str(path))


def _resolve_reward_functions(raw: dict[str, Any], base: Path) -> None:
    """`rl.rewards[].function: file.py:name` with a relative file is relative to the recipe,
    like the data paths (a recipe and its reward file travel together)."""
    rl = raw.get("rl")
    rewards = rl.get("rewards") if isinstance(rl, dict) else None
    for entry in rewards if isinstance(rewards, list) else []:
        spec = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(spec, str) or ":" not in spec:
            continue
        file_text, _, name = spec.rpartition(":")
        file = Path(file_text).expanduser()
        if file_text and not file.is_absolute():
            entry["function"] = f"{(base / file).resolve()}:{name}"


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe (every default spelled out) as YAML, atomically: a
    resumed run reads it back, so it must never be half-written."""
    from tuneloop.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("tuneloop.config.recipe.", "")
    return text.replace("|", "\\|")


def schema_markdown() -> str:
    """The recipe reference as Markdown: every section and field with type, default, meaning."""
    out = [
        "# Recipe reference",
        "",
        "<!-- Generated by `tuneloop recipe schema`; do not edit by hand. -->",
        "",
        "A recipe is one YAML file describing a run. Unknown keys are errors (with the nearest",
        "valid key suggested); any field can be overridden on the command line with",
        "`key=value`, e.g. `tuneloop train recipe.yaml training.learning_rate=1e-4 adapter.r=8`.",
        "",
        "An override's value is read as YAML (`1e-4`, `true`, `[q_proj,v_proj]`), except for",
        "text fields (type `str`), which take it as written, so",
        "`'data.system_prompt=Intent classifier: answer with the label.'` is that sentence. A",
        "text value quoted whole is unquoted, and `null` clears an optional one. A value that",
        "YAML reads as a mapping (it holds `: `) for any other field is refused with the",
        "quoting to use: `'adapter.target_modules=\"a: b\"'`.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str, title: str) -> None:
        out.extend([f"## `{title}`", "", (model.__doc__ or "").strip(), ""])
        out.append("| key | type | default | description |")
        out.append("| --- | --- | --- | --- |")
        nested: list[tuple[type[BaseModel], str]] = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, f"{prefix}{name}"))
                out.append(f"| `{prefix}{name}` | section | | {field.description} |")
                continue
            optional = [
                a
                for a in typing.get_args(annotation)
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if optional:  # `Section | None`: off unless given
                nested.append((optional[0], f"{prefix}{name}"))
                out.append(
                    f"| `{prefix}{name}` | optional section | `None` | {field.description} |"
                )
                continue
            if field.is_required():
                default = "**required**"
            elif field.default_factory is not None:
                default = f"`{field.default_factory()}`"  # type: ignore[call-arg]
            else:
                default = f"`{field.default}`"
            desc = field.description or ""
            out.append(f"| `{prefix}{name}` | `{_type_name(annotation)}` | {default} | {desc} |")
        out.append("")
        for sub, sub_prefix in nested:
            section(sub, f"{sub_prefix}.", sub_prefix)

    section(Recipe, "", "recipe")
    return "\n".join(out).rstrip() + "\n"
