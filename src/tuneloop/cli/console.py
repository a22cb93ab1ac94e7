"""What every command shares: quiet libraries and plain-text tables."""

from __future__ import annotations

from typing import Any

import click


def quiet_libraries() -> None:
    """Silence library chatter that buries tuneloop's own progress and messages."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """Left-aligned columns, as wide as their widest cell; `(none)` for no rows."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


def echo_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))
