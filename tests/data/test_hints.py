"""Label hints: nearest-label lookup, leave-one-out, the stored index, and the run path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.data.hints import HINT_PREFIX, HintIndex, with_hints
from tuneloop.errors import TuneloopError
from tuneloop.evaluation import evaluate_file
from tuneloop.training import train

from conftest import BANK_QUERIES, ticket_run_recipe


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_candidates_rank_labels_by_their_nearest_row() -> None:
    # label a has one row close to the query and one far; b's rows are all middling
    index = HintIndex(
        texts=["a1", "b1", "a2", "b2", "c1"],
        labels=["a", "b", "a", "b", "c"],
        vectors=_unit([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0.5, 0.5, 0.7], [0, 1, 0]]),
    )
    query = _unit([[0.9, 0.1, 0]])
    # a's best row (a1) is nearest, then b (b1), then c; the max, not the mean, decides
    assert index.candidates(query, 3) == [["a", "b", "c"]]
    assert index.candidates(query, 2) == [["a", "b"]]
    assert index.candidates(query, 10) == [["a", "b", "c"]]  # k clamps to the label count


def test_leave_one_out_never_hints_a_row_with_itself() -> None:
    # each row's nearest other row has the other label: without leave-one-out every row
    # would be hinted with its own label first
    index = HintIndex(
        texts=["x", "y", "z", "w"],
        labels=["a", "b", "a", "b"],
        vectors=_unit([[1, 0], [0.95, 0.31], [0, 1], [0.3, 0.95]]),
    )
    plain = index.candidates(index.vectors, 1)
    held_out = index.candidates(index.vectors, 1, exclude=[0, 1, 2, 3])
    assert plain == [["a"], ["b"], ["a"], ["b"]]
    assert held_out == [["b"], ["a"], ["b"], ["a"]]


def test_hints_from_real_embeddings_and_the_index_round_trip(tmp_path: Path) -> None:
    texts = BANK_QUERIES  # two per intent: card, password, exchange rate
    labels = ["card_arrival"] * 2 + ["password"] * 2 + ["exchange_rate"] * 2
    index = HintIndex.build(texts, labels)
    convs = [
        [{"role": "user", "content": t}, {"role": "assistant", "content": lab}]
        for t, lab in zip(texts, labels, strict=True)
    ]
    hinted = with_hints(convs, index, 2, leave_one_out=True)
    firsts = [c[0]["content"].split(HINT_PREFIX)[1].split(", ")[0] for c in hinted]
    assert firsts == labels  # each row's nearest other row shares its label
    assert convs[0][0]["content"] == texts[0]  # the input is not modified
    assert hinted[0][1] == convs[0][1]  # answers untouched

    saved = index.save(tmp_path / "hints")
    loaded = HintIndex.load(saved)
    assert loaded.texts == texts and loaded.labels == labels
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    new = [
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "my card still isn't here"},
        ]
    ]
    out = with_hints(new, loaded, 1)
    assert out[0][1]["content"] == "my card still isn't here" + HINT_PREFIX + "card_arrival"
    assert out[0][0] == new[0][0]


def test_bad_index_and_unlabelled_rows_are_clear_errors(tmp_path: Path) -> None:
    from tuneloop.errors import DataError

    with pytest.raises(DataError, match="row 1 has none"):
        HintIndex.build(["a", "b"], ["x", None])
    with pytest.raises(TuneloopError, match="cannot read the run's label-hint index"):
        HintIndex.load(tmp_path / "missing")
    index = HintIndex(["a"], ["x"], _unit([[1.0, 0.0]]))
    saved = index.save(tmp_path / "h")
    (saved / "index.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    with pytest.raises(TuneloopError, match="2 rows, 1 vectors"):
        HintIndex.load(saved)


def test_a_run_with_label_hints_prompts_new_data_with_the_same_hints(
    tiny_model: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(
        ticket_run_recipe(tiny_model, tmp_path, "hinted", ["hardware", "accounts"], label_hints=2)
    )
    result = train(recipe)
    meta = json.loads((result.run_dir / "run.json").read_text())
    record = meta["prompt_format"]["label_hints"]
    assert record["k"] == 2 and record["rows"] == 8  # 2 of each label held out
    assert Path(record["index"]).is_dir()
    # the held-out file keeps the raw rows: evaluating it adds the hints once, not twice
    held = (result.run_dir / "validation.jsonl").read_text()
    assert HINT_PREFIX.strip() not in held

    new_csv = tmp_path / "new.csv"
    new_csv.write_text("text,label\nthe printer is jammed,hardware\n")
    out = evaluate_file(f"run:{result.run_id}", new_csv, max_new_tokens=2, batch_size=1)
    prompt = registry.eval_examples(out.eval_id)[0].prompt
    assert prompt[-1]["content"] == "the printer is jammed" + HINT_PREFIX + "hardware, accounts"
    (stored,) = [e for e in registry.evals_for_run(result.run_id) if e.id == out.eval_id]
    assert stored.settings["label_hints"]["k"] == 2

    # `tuneloop serve` prepares requests the same way: the run's system prompt, then hints
    from tuneloop.data.prompting import Prompting
    from tuneloop.models import resolve

    prompting = Prompting.of(resolve(f"run:{result.run_id}"))
    (served,) = prompting.prepare([[{"role": "user", "content": "the printer is jammed"}]])
    assert served == prompt


def test_tuning_the_embedder_pulls_each_label_together_and_is_saved(tmp_path: Path) -> None:
    from tuneloop.data.embed import embed

    texts = [
        "card has not arrived",
        "where is my new card",
        "card delivery is late",
        "top up failed",
        "my top-up did not go through",
        "top up was declined",
        "what is the exchange rate",
        "rate for converting euros",
        "how much is a dollar worth",
    ]
    labels = ["card"] * 3 + ["top_up"] * 3 + ["rate"] * 3

    def margin(vectors: np.ndarray) -> float:
        """Mean same-label similarity minus mean other-label similarity."""
        sims = vectors @ vectors.T
        same = np.array([[a == b for b in labels] for a in labels]) & ~np.eye(
            len(labels), dtype=bool
        )
        other = ~np.array([[a == b for b in labels] for a in labels])
        return float(sims[same].mean() - sims[other].mean())

    before = margin(embed(texts))
    index = HintIndex.build(texts, labels, tune_steps=15, seed=0)
    assert margin(index.vectors) > before + 0.05
    # the bundled embedder itself is untouched (tuning works on a copy)
    np.testing.assert_allclose(embed(texts), embed(texts))
    assert margin(embed(texts)) == pytest.approx(before, abs=1e-5)

    loaded = HintIndex.load(index.save(tmp_path / "hints"))
    assert (tmp_path / "hints" / "embedder").is_dir()
    np.testing.assert_allclose(loaded.embed(texts[:2]), index.vectors[:2], atol=1e-5)


def test_hint_tuning_without_hints_is_a_recipe_error() -> None:
    from tuneloop.errors import RecipeError

    with pytest.raises(RecipeError, match=r"set data\.label_hints or data\.label_rerank"):
        recipe_from_dict({"name": "x", "data": {"train": "t.jsonl", "hint_tune_steps": 10}})


def test_a_failed_save_leaves_the_old_index_whole_and_no_temporary_folder(
    tmp_path: Path,
) -> None:
    class BrokenEmbedder:
        def save(self, path: str) -> None:
            Path(path).mkdir()
            raise OSError("disk full")

    old = HintIndex(["a"], ["x"], _unit([[1.0, 0.0]]))
    saved = old.save(tmp_path / "h")
    new = HintIndex(["b", "c"], ["y", "z"], _unit([[0.0, 1.0], [1.0, 1.0]]), BrokenEmbedder())
    with pytest.raises(OSError, match="disk full"):
        new.save(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]
    assert HintIndex.load(saved).texts == ["a"]
