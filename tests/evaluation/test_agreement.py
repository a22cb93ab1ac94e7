"""Agreement statistics against reference implementations (scikit-learn, statsmodels, the
`krippendorff` package) and Krippendorff's own worked example."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tuneloop.evaluation.agreement import (
    agreement,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
)

LEVELS = ["nominal", "ordinal", "interval", "ratio"]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers (rows)
# code 12 units (columns) on a 1-5 scale, with missing values.
KRIPPENDORFF_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(observers: list[list[Any]]) -> list[list[Any]]:
    """Observers x units (as the paper and the `krippendorff` package write it) to units x
    raters (as `krippendorff_alpha` takes it)."""
    return [list(unit) for unit in zip(*observers, strict=True)]


def _reference_alpha(units: list[list[Any]], level: str) -> float:
    krippendorff = pytest.importorskip("krippendorff")
    data = np.array(
        [[np.nan if v is None else float(v) for v in unit] for unit in units], dtype=float
    )
    return float(krippendorff.alpha(reliability_data=data.T, level_of_measurement=level))


def _ratings(seed: int, units: int, raters: int, missing: float, values: list[Any]) -> list:
    """Correlated raters: each unit has a true value that most raters give, some give a
    neighbouring one, and a share of labels are missing (None)."""
    rng = np.random.default_rng(seed)
    table = []
    for _ in range(units):
        truth = int(rng.integers(len(values)))
        row = []
        for _ in range(raters):
            if rng.random() < missing:
                row.append(None)
                continue
            shift = int(rng.choice([-1, 0, 0, 0, 1]))
            row.append(values[min(max(truth + shift, 0), len(values) - 1)])
        table.append(row)
    return table


# --- Cohen's kappa ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_cohen_kappa_matches_scikit_learn(seed: int) -> None:
    from sklearn.metrics import cohen_kappa_score

    labels = [["good", "bad"], [1, 2, 3], ["a", "b", "tie"], [1, 2, 3, 4, 5]][seed % 4]
    table = _ratings(seed, units=40 + seed, raters=2, missing=0.0, values=labels)
    a, b = [row[0] for row in table], [row[1] for row in table]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_cohen_kappa_hand_made_and_degenerate() -> None:
    from sklearn.metrics import cohen_kappa_score

    a = ["x", "x", "y", "y", "z", "x"]
    b = ["x", "y", "y", "z", "z", "x"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(["x"] * 3, ["x"] * 3) == 1.0  # chance always agrees, and they did
    assert cohen_kappa(["x", "x", "x", "y"], ["y", "x", "x", "x"]) == pytest.approx(
        cohen_kappa_score(["x", "x", "x", "y"], ["y", "x", "x", "x"])
    )
    with pytest.raises(ValueError, match="2 labels against 1"):
        cohen_kappa(["x", "y"], ["x"])
    with pytest.raises(ValueError, match="at least one item"):
        cohen_kappa([], [])


def test_cohen_kappa_is_still_importable_from_judge() -> None:
    from tuneloop.evaluation import judge

    assert judge.cohen_kappa is cohen_kappa


# --- Fleiss' kappa ------------------------------------------------------------------------


def _reference_fleiss(units: list[list[Any]]) -> float:
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    table, _ = inter_rater.aggregate_raters(np.array(units))
    return float(inter_rater.fleiss_kappa(table, method="fleiss"))


@pytest.mark.parametrize(
    ("seed", "raters", "values"),
    [
        (0, 3, ["good", "bad"]),
        (1, 5, [1, 2, 3, 4, 5]),
        (2, 2, ["a", "b", "tie"]),
        (3, 4, ["pos", "neg", "neutral", "off-topic"]),
        (4, 7, [0, 1]),
    ],
)
def test_fleiss_kappa_matches_statsmodels(seed: int, raters: int, values: list[Any]) -> None:
    units = _ratings(seed, units=30, raters=raters, missing=0.0, values=values)
    assert fleiss_kappa(units) == pytest.approx(_reference_fleiss(units), abs=1e-12)


def test_fleiss_kappa_hand_made() -> None:
    # Wikipedia's worked example: 10 subjects, 14 raters, 5 categories; kappa 0.210
    counts = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    units = [[c for c, n in enumerate(row) for _ in range(n)] for row in counts]
    assert fleiss_kappa(units) == pytest.approx(_reference_fleiss(units), abs=1e-12)
    assert fleiss_kappa(units) == pytest.approx(0.210, abs=5e-4)
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) == 1.0  # one category: degenerate
    assert fleiss_kappa([["a", "b"], ["b", "a"]]) == pytest.approx(-1.0)


def test_fleiss_kappa_rejects_unequal_counts() -> None:
    with pytest.raises(ValueError, match="unit 2 has 2, unit 0 has 3"):
        fleiss_kappa([["a", "b", "a"], ["a", "a", "a"], ["b", "b"], ["a"]])
    with pytest.raises(ValueError, match="unit 0 has 1"):
        fleiss_kappa([["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one unit"):
        fleiss_kappa([])


# --- Krippendorff's alpha -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_alpha_on_krippendorffs_example(level: str, expected: float) -> None:
    units = _units(KRIPPENDORFF_EXAMPLE)
    assert krippendorff_alpha(units, level) == pytest.approx(expected, abs=5e-4)
    assert krippendorff_alpha(units, level) == pytest.approx(
        _reference_alpha(units, level), abs=1e-12
    )


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("seed", "raters", "missing"), [(0, 3, 0.0), (1, 4, 0.3), (2, 6, 0.5), (3, 2, 0.2)]
)
def test_krippendorff_alpha_matches_reference_on_ratings(
    level: str, seed: int, raters: int, missing: float
) -> None:
    """Ordinal 1-5 ratings with missing labels, at every level."""
    units = _ratings(seed, units=50, raters=raters, missing=missing, values=[1, 2, 3, 4, 5])
    assert krippendorff_alpha(units, level) == pytest.approx(
        _reference_alpha(units, level), abs=1e-12
    )


@pytest.mark.parametrize("level", ["interval", "ratio"])
@pytest.mark.parametrize("seed", range(3))
def test_krippendorff_alpha_matches_reference_on_continuous_scores(level: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = rng.uniform(0.5, 10.0, size=25)
    scores = truth[:, None] + rng.normal(0, 1.0, size=(25, 4))
    units = [
        [None if rng.random() < 0.25 else float(abs(v)) for v in row] for row in scores.tolist()
    ]
    assert krippendorff_alpha(units, level) == pytest.approx(
        _reference_alpha(units, level), abs=1e-10
    )


def test_krippendorff_alpha_nominal_strings_and_edge_cases() -> None:
    units = [
        ["a", "a", None],
        ["b", "a", "b"],
        [None, "c", None],
        ["c", "c", "c"],
        ["a", "b", None],
    ]
    coded = {"a": 1, "b": 2, "c": 3}
    as_numbers = [[None if v is None else coded[v] for v in unit] for unit in units]
    assert krippendorff_alpha(units) == pytest.approx(
        _reference_alpha(as_numbers, "nominal"), abs=1e-12
    )
    # NaN is a missing label as well as None; a unit with one label is ignored
    assert krippendorff_alpha([[1, float("nan"), 2], [2, 2, None], [7, None, None]]) == (
        pytest.approx(krippendorff_alpha([[1, None, 2], [2, 2, None]]))
    )
    assert krippendorff_alpha([[3, 3], [3, None, 3]], "interval") == 1.0  # nothing differs
    assert krippendorff_alpha([[1, 1], [2, 2]], "ordinal") == 1.0


def test_krippendorff_alpha_errors() -> None:
    with pytest.raises(ValueError, match="unknown level 'cardinal'"):
        krippendorff_alpha([[1, 2], [2, 2]], "cardinal")
    with pytest.raises(ValueError, match="no unit has two labels"):
        krippendorff_alpha([[1, None], [None, 2], [None, None]])
    with pytest.raises(ValueError, match="no unit has two labels"):
        krippendorff_alpha([])
    with pytest.raises(ValueError, match="numeric labels"):
        krippendorff_alpha([["a", "b"], ["b", "b"]], "interval")


# --- agreement() --------------------------------------------------------------------------

STUDIO_LABELS: dict[str, dict[str, Any]] = {
    "u1": {"ann": "good", "bob": "good", "cy": "good"},
    "u2": {"ann": "good", "bob": "bad", "cy": "bad"},
    "u3": {"ann": "bad", "bob": "bad"},
    "u4": {"ann": "good", "cy": "good"},
    "u5": {"bob": "bad"},  # one label: not pairable
    "u6": {"ann": "bad", "bob": "bad", "cy": "good"},
    "u7": {"ann": None},  # no label at all
}


def test_agreement_on_a_hand_example() -> None:
    result = agreement(STUDIO_LABELS)
    assert result["units"] == 5
    assert result["raters"] == ["ann", "bob", "cy"]
    assert result["labels"] == 14
    assert result["level"] == "nominal"
    # per unit: 1, 2/6, 1, 1, 2/6 agreeing ordered pairs
    assert result["percent_agreement"] == pytest.approx(11 / 15)
    # ann-bob: u1 u2 u3 u6, observed 3/4, chance 1/2 -> 0.5
    # ann-cy: u1 u2 u4 u6, observed 1/2, chance 5/8 -> -1/3
    # bob-cy: u1 u2 u6, observed 2/3, chance 4/9 -> 0.4
    pairs = result["cohen_pairs"]
    assert [p["raters"] for p in pairs] == [["ann", "bob"], ["ann", "cy"], ["bob", "cy"]]
    assert [p["units"] for p in pairs] == [4, 4, 3]
    assert [p["kappa"] for p in pairs] == pytest.approx([0.5, -1 / 3, 0.4])
    assert result["cohen_kappa"] == pytest.approx(17 / 90)
    # Fleiss over u1 u2 u6 (three labels each): observed 5/9, chance 41/81 -> 0.1
    assert result["fleiss_units"] == 3
    assert result["fleiss_kappa"] == pytest.approx(0.1)
    # coincidences good-good 5, bad-bad 4, good-bad 2 + 2: alpha = 1 - 12 * 4 / (2 * 7 * 6)
    assert result["krippendorff_alpha"] == pytest.approx(3 / 7)
    table = [[row.get(r) for r in ["ann", "bob", "cy"]] for row in STUDIO_LABELS.values()]
    coded = [[None if v is None else int(v == "good") for v in row] for row in table]
    assert result["krippendorff_alpha"] == pytest.approx(_reference_alpha(coded, "nominal"))
    assert agreement(dict(reversed(STUDIO_LABELS.items()))) == result  # deterministic


def test_agreement_ordinal_ratings_use_the_level_for_alpha_only() -> None:
    labels = {
        f"item{i}": {f"r{j}": v for j, v in enumerate(row) if v is not None}
        for i, row in enumerate(
            _ratings(7, units=30, raters=4, missing=0.2, values=[1, 2, 3, 4, 5])
        )
    }
    nominal, ordinal = agreement(labels), agreement(labels, level="ordinal")
    table = [[row.get(f"r{j}") for j in range(4)] for row in labels.values()]
    assert ordinal["krippendorff_alpha"] == pytest.approx(_reference_alpha(table, "ordinal"))
    assert nominal["krippendorff_alpha"] == pytest.approx(_reference_alpha(table, "nominal"))
    for key in ("percent_agreement", "cohen_kappa", "cohen_pairs", "fleiss_kappa"):
        assert nominal[key] == ordinal[key]
    assert ordinal["level"] == "ordinal"


def test_agreement_with_too_little_data_gives_none() -> None:
    result = agreement({"u1": {"ann": 1}, "u2": {"bob": 2}})
    assert result["units"] == 0 and result["labels"] == 2
    assert result["raters"] == ["ann", "bob"]
    for key in ("percent_agreement", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
        assert result[key] is None
    assert result["cohen_pairs"] == [] and result["fleiss_units"] == 0
    assert agreement({})["units"] == 0
    # a pair sharing one unit has no kappa; interval labels that are not numbers have no alpha
    one = agreement({"u1": {"ann": "x", "bob": "x"}}, level="interval")
    assert one["cohen_kappa"] is None and one["cohen_pairs"] == []
    assert one["krippendorff_alpha"] is None
    assert one["fleiss_kappa"] == 1.0 and one["fleiss_units"] == 1


def test_agreement_fleiss_takes_the_most_common_label_count() -> None:
    labels = {
        "u1": {"a": 1, "b": 1},
        "u2": {"a": 1, "b": 2},
        "u3": {"a": 1, "b": 1, "c": 1},
        "u4": {"a": 2, "b": 2, "c": 1},
    }
    result = agreement(labels)  # two units with 2 labels, two with 3: the larger wins
    assert result["fleiss_units"] == 2
    assert result["fleiss_kappa"] == pytest.approx(fleiss_kappa([[1, 1, 1], [2, 2, 1]]))
    labels["u5"] = {"a": 2, "c": 2}
    result = agreement(labels)
    assert result["fleiss_units"] == 3
    assert result["fleiss_kappa"] == pytest.approx(fleiss_kappa([[1, 1], [1, 2], [2, 2]]))


def test_agreement_rejects_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown level 'likert'"):
        agreement(STUDIO_LABELS, level="likert")
