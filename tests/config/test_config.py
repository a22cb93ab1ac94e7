from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneloop.config import Recipe, dump_recipe, load_recipe, recipe_from_dict, schema_markdown
from tuneloop.errors import RecipeError

from conftest import REPO


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_are_the_careful_ones() -> None:
    recipe = recipe_from_dict({"data": {"train": "x.jsonl"}})
    assert recipe.model == "smollm2-135m-instruct"
    assert recipe.adapter.type == "lora" and recipe.adapter.target_modules == "all-linear"
    assert (recipe.adapter.r, recipe.adapter.alpha, recipe.adapter.dropout) == (32, 64, 0.0)
    assert recipe.training.learning_rate is None  # chosen by adapter and model size
    assert recipe.data.train_on == "all_assistant"  # loss on answers only, never the prompt
    assert recipe.training.epochs == 3
    assert recipe.training.gradient_checkpointing is False


def test_typo_suggests_nearest_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "a.jsonl"}, "training": {"learnig_rate": 1e-4}})
    with pytest.raises(
        RecipeError,
        match=r"unknown key 'training.learnig_rate' \(did you mean "
        r"'training.learning_rate'\?\)",
    ):
        load_recipe(path)


def test_top_level_typo(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "a.jsonl"}, "adaptor": {"r": 8}})
    with pytest.raises(RecipeError, match="did you mean 'adapter'"):
        load_recipe(path)


def test_bad_values_name_the_key() -> None:
    with pytest.raises(RecipeError, match=r"training.learning_rate: .*greater than 0 \(got -1"):
        recipe_from_dict({"data": {"train": "a"}, "training": {"learning_rate": -1}})
    with pytest.raises(RecipeError, match=r"adapter\.r: .*greater than 0"):
        recipe_from_dict({"data": {"train": "a"}, "adapter": {"r": 0}})
    with pytest.raises(RecipeError, match="missing required key 'data'"):
        recipe_from_dict({})


def test_overrides_parse_types_and_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "train.jsonl"}})
    recipe = load_recipe(
        path,
        [
            "training.learning_rate=1e-4",
            "adapter.r=8",
            "adapter.target_modules=[q_proj,v_proj]",
            "training.gradient_checkpointing=true",
            "name=my run",
        ],
    )
    assert recipe.training.learning_rate == pytest.approx(1e-4)
    assert recipe.adapter.r == 8
    assert recipe.adapter.target_modules == ["q_proj", "v_proj"]
    assert recipe.training.gradient_checkpointing is True
    assert recipe.name == "my run"
    # relative paths in the file are relative to the recipe file
    assert recipe.data.train == str((tmp_path / "train.jsonl").resolve())


def test_override_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "a.jsonl"}})
    with pytest.raises(RecipeError, match="not of the form key=value"):
        load_recipe(path, ["training.learning_rate"])
    with pytest.raises(RecipeError, match=r"did you mean .training\.epochs."):
        load_recipe(path, ["training.epoch=2"])
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe(path, ["data.train.x=1"])


def test_text_overrides_are_taken_as_written(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "a.jsonl", "system_prompt": "old"}})
    recipe = load_recipe(
        path,
        [
            "data.system_prompt=Intent classifier: answer with the label.",
            "name=2024",  # YAML would make this an int
            "data.template=Ticket: {text}",
        ],
    )
    assert recipe.data.system_prompt == "Intent classifier: answer with the label."
    assert recipe.name == "2024"
    assert recipe.data.template == "Ticket: {text}"
    # a value quoted whole is unquoted (sweeps write JSON strings); null clears an option
    recipe = load_recipe(path, ['name="a: b"', "data.system_prompt=null"])
    assert recipe.name == "a: b" and recipe.data.system_prompt is None


def test_an_override_read_as_a_mapping_says_how_to_quote(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"train": "a.jsonl"}})
    with pytest.raises(
        RecipeError,
        match=r"adapter\.target_modules=q: v': the value reads as a YAML mapping .*"
        r"quote it whole, e.g. 'adapter\.target_modules=\"q: v\"'",
    ):
        load_recipe(path, ["adapter.target_modules=q: v"])
    # a whole section may still be given as a mapping
    recipe = load_recipe(path, ["adapter={r: 8, alpha: 16}"])
    assert (recipe.adapter.r, recipe.adapter.alpha) == (8, 16)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [unclosed\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    recipe = recipe_from_dict({"data": {"train": "/d/t.jsonl"}, "adapter": {"r": 4}})
    dump_recipe(recipe, tmp_path / "resolved.yaml")
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again == recipe


def _shipped_recipes() -> list[Path]:
    """Every training recipe under examples/ (curation configs have `steps`, suites `tasks`)."""
    found = []
    for path in sorted(REPO.glob("examples/**/*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and "data" in raw and not {"steps", "tasks"} & set(raw):
            found.append(path)
    return found


@pytest.mark.parametrize("path", _shipped_recipes(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_parses(path: Path, tmp_path: Path) -> None:
    if yaml.safe_load(path.read_text())["data"]["train"] is None:
        # recipes for data outside the repository take the path on the command line
        with pytest.raises(RecipeError, match=r"data\.train is not set.*data\.train=PATH"):
            load_recipe(path)
        data = tmp_path / "rows.csv"
        data.write_text("text,label\nhello,greeting\n")
        recipe = load_recipe(path, [f"data.train={data}"])
    else:
        recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert Path(recipe.data.train).is_file()


def test_a_stored_dataset_reference_is_not_taken_for_a_path(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train: dataset:3\n")
    assert load_recipe(path).data.train == "dataset:3"
    # nor on the command line (`tuneloop train R data.train=dataset:4`, a studio export)
    assert load_recipe(path, ["data.train=dataset:4"]).data.train == "dataset:4"


def test_docs_recipes_md_is_generated_from_schema() -> None:
    doc = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert doc == schema_markdown(), "regenerate with: tuneloop recipe schema > docs/recipes.md"


def test_schema_documents_every_field() -> None:
    text = schema_markdown()
    for section in ("data", "adapter", "training", "eval"):
        model = Recipe.model_fields[section].annotation
        for name, field in model.model_fields.items():
            assert field.description, f"{section}.{name} has no description"
            assert f"`{section}.{name}`" in text


def test_model_loading_is_safe_by_default_and_remote_code_needs_a_pinned_commit() -> None:
    recipe = recipe_from_dict({"data": {"train": "a"}})
    loading = recipe.model_loading
    assert (loading.allow_pickle_weights, loading.trust_remote_code, loading.revision) == (
        False,
        False,
        None,
    )
    for revision in (None, "main", "v1.0"):  # a branch or tag can move under the code
        with pytest.raises(RecipeError, match=r"trust_remote_code needs .*revision pinned"):
            recipe_from_dict(
                {
                    "data": {"train": "a"},
                    "model_loading": {"trust_remote_code": True, "revision": revision},
                }
            )
    commit = "0123456789abcdef0123456789abcdef01234567"
    pinned = recipe_from_dict(
        {"data": {"train": "a"}, "model_loading": {"trust_remote_code": True, "revision": commit}}
    )
    assert pinned.model_loading.trust_remote_code and pinned.model_loading.revision == commit


def test_a_reward_function_file_is_relative_to_the_recipe(tmp_path: Path) -> None:
    """Like data paths, `rl.rewards[].function: file.py:name` resolves against the recipe's
    folder, so a recipe and its reward file can be run from anywhere."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "data.jsonl").write_text("{}\n")
    (folder / "r.yaml").write_text(
        "method: ppo\ndata:\n  train: data.jsonl\nrl:\n  rewards:\n"
        "    - {function: rewards.py:brevity, weight: 1.0}\n"
    )
    recipe = load_recipe(folder / "r.yaml")
    assert recipe.rl.rewards[0].function == f"{(folder / 'rewards.py').resolve()}:brevity"
