"""Label reranking: the lookup's label distribution, the combined choice, and the run path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.data.hints import HintIndex
from tuneloop.data.rerank import LabelRerank, rerank_answers
from tuneloop.evaluation import evaluate_file
from tuneloop.models import load
from tuneloop.models.generate import answer_tokens, encode_prompt
from tuneloop.training import train

from conftest import BANK_QUERIES, ticket_run_recipe


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _answer_logp(model: object, tokenizer: object, prompt: list, answer: str) -> float:
    import torch

    head = encode_prompt(tokenizer, prompt)
    tail = answer_tokens(tokenizer, prompt, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([head + tail])).logits[0].float()  # type: ignore[operator]
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(head) - 1 + j, t].item() for j, t in enumerate(tail))


def test_label_log_probs_are_a_softmax_of_log_sum_exp_scores() -> None:
    vectors = _unit([[1, 0, 0], [0.8, 0.6, 0], [0.8, 0.6, 0.05], [0, 0, 1]])
    index = HintIndex(["a1", "b1", "b2", "c1"], ["a", "b", "b", "c"], vectors)
    query = _unit([[0.95, 0.3, 0]])
    names, logp = index.label_log_probs(query, temperature=0.05)
    assert names == ["a", "b", "c"]
    sims = (query @ vectors.T)[0].astype(np.float64) / 0.05
    scores = np.array(
        [sims[0], np.log(np.exp(sims[1]) + np.exp(sims[2])), sims[3]]
    )  # a: one row, b: two rows summed, c: one row
    expected = scores - np.log(np.exp(scores).sum())
    np.testing.assert_allclose(logp[0], expected, rtol=1e-6)
    assert np.exp(logp).sum() == pytest.approx(1.0)
    # a's single row is a little nearer than either b row, but b's two rows together win
    assert sims[0] > sims[1] and logp[0, 1] > logp[0, 0]


def test_the_choice_is_the_best_combined_score_among_the_candidates(tiny_model: Path) -> None:
    model, tokenizer, _ = load(str(tiny_model))
    texts = BANK_QUERIES  # two per intent: card, password, exchange rate
    labels = ["card", "card", "password", "password", "rate", "rate"]
    index = HintIndex.build(texts, labels)
    queries = ["my card is still not here", "what rate do you give for yen"]
    prompts = [[{"role": "user", "content": q}] for q in queries]

    chosen = rerank_answers(model, tokenizer, prompts, queries, LabelRerank(index, 2, 1.0))
    names, logp = index.label_log_probs(index.embed(queries))
    for i, result in enumerate(chosen):
        # the candidates are the lookup's 2 best labels, best first, with its log-probs
        best_two = [names[c] for c in np.argsort(-logp[i])[:2]]
        assert [c[0] for c in result.candidates] == best_two
        for label, model_lp, lookup_lp in result.candidates:
            assert lookup_lp == pytest.approx(logp[i, names.index(label)])
            # the model's score is the log-likelihood of the label as its whole answer,
            # as one plain forward pass over prompt + answer computes it
            assert model_lp == pytest.approx(
                _answer_logp(model, tokenizer, prompts[i], label), abs=1e-4
            )
        combined = {lab: m + q for lab, m, q in result.candidates}
        assert result.text == max(combined, key=combined.get)
    # the lookup alone (a huge weight) gives its own first choice, which is right here
    lookup = rerank_answers(model, tokenizer, prompts, queries, LabelRerank(index, 2, 1e6))
    assert [r.text for r in lookup] == ["card", "rate"]
    # weight 0: the (untrained) model alone decides among the same candidates
    alone = rerank_answers(model, tokenizer, prompts, queries, LabelRerank(index, 2, 0.0))
    for result in alone:
        assert result.text == max(result.candidates, key=lambda c: c[1])[0]
    with pytest.raises(ValueError, match="2 prompts but 1 queries"):
        rerank_answers(model, tokenizer, prompts, queries[:1], LabelRerank(index, 2))


def test_a_run_with_label_rerank_answers_new_data_with_labels(
    tiny_model: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(
        ticket_run_recipe(
            tiny_model, tmp_path, "reranked", ["hardware", "accounts", "billing"], label_rerank=2
        )
    )
    result = train(recipe)
    meta = json.loads((result.run_dir / "run.json").read_text())
    fmt = meta["prompt_format"]
    assert "label_hints" not in fmt  # the index is kept, the prompts are not changed
    assert fmt["label_rerank"]["k"] == 2 and fmt["label_rerank"]["weight"] == 2.0
    assert Path(fmt["label_rerank"]["index"]).is_dir()

    new_csv = tmp_path / "new.csv"
    new_csv.write_text(
        "text,label\nthe printer is jammed,hardware\nmy invoice was charged twice,billing\n"
    )
    out = evaluate_file(f"run:{result.run_id}", new_csv, max_new_tokens=2, batch_size=2)
    examples = registry.eval_examples(out.eval_id)
    # a tiny 2-step model alone answers noise; with the lookup every answer is a label and
    # these two clear cases are right
    assert [e.prediction for e in examples] == ["hardware", "billing"]
    assert out.metrics["accuracy"] == 1.0
    (stored,) = [e for e in registry.evals_for_run(result.run_id) if e.id == out.eval_id]
    assert stored.settings["decoding"] == "label rerank of 2 candidates"
    assert len(out.examples[0]["candidates"]) == 2
    # which candidate won is stored with each example (0 = the lookup's first choice)
    assert all(e.scores["candidate_rank"] in (0.0, 1.0) for e in examples)

    # `tuneloop serve` (and `tuneloop.Model`) answer the same requests with the same labels,
    # through the same prompting object
    from tuneloop.data.prompting import Prompting
    from tuneloop.models import resolve

    prompting = Prompting.of(resolve(f"run:{result.run_id}"))
    model, tokenizer, _ = load(f"run:{result.run_id}")
    raw = [[{"role": "user", "content": e.prompt[-1]["content"]}] for e in examples]
    served = prompting.answer(model, tokenizer, raw)
    assert [g.text for g in served] == ["hardware", "billing"]


def test_candidate_scores_do_not_depend_on_batching(tiny_model: Path) -> None:
    # prompts of different lengths share a batch (left padding, shared KV cache): each
    # score must equal the one it gets alone, and a plain forward pass's
    from tuneloop.models.generate import score_candidates

    model, tokenizer, _ = load(str(tiny_model))
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a much longer message about a card that never came"}],
        [{"role": "system", "content": "Route it."}, {"role": "user", "content": "rate?"}],
    ]
    labels = [["card", "top_up_failed"], ["exchange_rate", "card"], ["card", "rate"]]
    together = score_candidates(model, tokenizer, prompts, labels, batch_size=3)
    alone = [
        score_candidates(model, tokenizer, [p], [c])[0]
        for p, c in zip(prompts, labels, strict=True)
    ]
    np.testing.assert_allclose(together, alone, atol=1e-4)
    for prompt, cands, scores in zip(prompts, labels, together, strict=True):
        for label, score in zip(cands, scores, strict=True):
            assert score == pytest.approx(_answer_logp(model, tokenizer, prompt, label), abs=1e-4)
    with pytest.raises(ValueError, match="same, non-zero number"):
        score_candidates(model, tokenizer, prompts[:2], [["a"], ["a", "b"]])


def test_an_index_already_read_for_hints_is_reused(tmp_path: Path) -> None:
    """A run with label hints and label reranking keeps one index; evaluation and serving
    read it once and hand it to the reranker."""
    from tuneloop.errors import TuneloopError

    index = HintIndex(["a1", "b1"], ["a", "b"], np.eye(2, dtype=np.float32))
    where = str(tmp_path / "gone")  # nothing on disk: a second read would fail
    record = {"index": where, "k": 2, "weight": 2.0}
    rerank = LabelRerank.from_record(record, {where: index})
    assert rerank.index is index and rerank.k == 2 and rerank.weight == 2.0
    with pytest.raises(TuneloopError, match="cannot read"):
        LabelRerank.from_record(record, {str(tmp_path / "other"): index})
