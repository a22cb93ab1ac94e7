"""General-ability probes shipped with tuneloop, for the forgetting check.

`general.jsonl`: 219 short instructions with one checkable reference answer each, in 14
categories (arithmetic, units, strings, facts, science, vocabulary, rewriting, sentiment,
extraction, JSON, code, reasoning, format, translation), written by the tuneloop team
(`scripts/build_probes.py` builds the file; the file is what ships). Rows are chat rows
with an `id` and a `category`.
"""

from __future__ import annotations

from pathlib import Path

GENERAL = Path(__file__).with_name("general.jsonl")


def general_probes() -> Path:
    """Path of the general-ability probe set (a chat JSONL file any reader accepts)."""
    return GENERAL
