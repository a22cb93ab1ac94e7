"""Fuzzing the readers: any bytes give row-level errors or one clean DataError, never a
traceback, and good rows survive whatever garbage surrounds them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.data import read_rows
from tuneloop.errors import DataError

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _read(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            result = read_rows(path)
        except DataError as err:
            assert str(err) and "\n" not in str(err).strip()
            return
        assert result.rows
        for err in result.errors:
            assert err.where and err.problem


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]))
def test_any_bytes_never_raise_anything_but_data_error(data: bytes, suffix: str) -> None:
    _read(data, suffix)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(st.lists(json_values, max_size=8))
def test_any_json_rows_are_explained(values: list[object]) -> None:
    _read("\n".join(json.dumps(v) for v in values).encode(), ".jsonl")


@SETTINGS
@given(
    good=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=30).filter(str.strip),
            st.text(min_size=1, max_size=30).filter(str.strip),
        ),
        min_size=1,
        max_size=6,
    ),
    junk=st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=6),
    seed=st.integers(0, 10_000),
)
def test_good_rows_survive_junk_lines(
    good: list[tuple[str, str]], junk: list[bytes], seed: int
) -> None:
    import random

    lines = [json.dumps({"prompt": p, "response": r}).encode() for p, r in good]
    mixed = lines + junk
    random.Random(seed).shuffle(mixed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.jsonl"
        path.write_bytes(b"\n".join(mixed))
        result = read_rows(path)
    got = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in result.rows]
    for pair in good:
        assert pair in got
    assert len(result.rows) + len(result.errors) >= len(good)
