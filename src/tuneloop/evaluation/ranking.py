"""Ratings from pairwise verdicts (judges or people): Bradley-Terry and Elo, with intervals.

A verdict is one game: model A against model B on one prompt, won by A, by B, or tied.
Bradley-Terry fits one strength per model to all games at once (the maximum-likelihood
answer, independent of game order); Elo updates ratings game by game, so it depends on
the order and is reported for familiarity. Both are on the Elo scale (400 points = 10:1
odds), centred so the mean rating is 1000, and both get percentile-bootstrap intervals
from resampling the games.

A tie counts as half a win for each side. Bradley-Terry adds `prior` virtual ties to
every pair that played, so a model that lost every game still gets a finite rating.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SCALE = 400 / math.log(10)  # natural-log strength -> Elo points
OUTCOMES = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class Game:
    a: str
    b: str
    winner: str  # "a", "b" or "tie"

    def __post_init__(self) -> None:
        if self.winner not in OUTCOMES:
            raise ValueError(f"winner must be 'a', 'b' or 'tie', got {self.winner!r}")
        if self.a == self.b:
            raise ValueError(f"a game needs two different models, got {self.a!r} twice")


def _models(games: Sequence[Game]) -> list[str]:
    return sorted({g.a for g in games} | {g.b for g in games})


def bradley_terry(
    games: Sequence[Game], prior: float = 1.0, iterations: int = 1000, tol: float = 1e-10
) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings (minorisation-maximisation, Hunter 2004)."""
    models = _models(games)
    if not models:
        return {}
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = [0.0] * n
    played: dict[tuple[int, int], float] = Counter()
    for g in games:
        i, j = index[g.a], index[g.b]
        s = OUTCOMES[g.winner]
        wins[i] += s
        wins[j] += 1 - s
        played[(min(i, j), max(i, j))] += 1
    for pair in list(played):  # virtual ties: finite ratings for all-win / all-loss models
        played[pair] += prior
        wins[pair[0]] += prior / 2
        wins[pair[1]] += prior / 2
    strength = [1.0] * n
    for _ in range(iterations):
        denom = [0.0] * n
        for (i, j), count in played.items():
            d = count / (strength[i] + strength[j])
            denom[i] += d
            denom[j] += d
        new = [wins[i] / denom[i] if denom[i] else strength[i] for i in range(n)]
        geo = math.exp(sum(math.log(max(x, 1e-300)) for x in new) / n)
        new = [x / geo for x in new]
        delta = max(
            abs(math.log(max(a, 1e-300)) - math.log(max(b, 1e-300)))
            for a, b in zip(new, strength, strict=True)
        )
        strength = new
        if delta < tol:
            break
    return {m: 1000 + SCALE * math.log(max(strength[index[m]], 1e-300)) for m in models}


def elo(games: Sequence[Game], k: float = 16.0, initial: float = 1000.0) -> dict[str, float]:
    """Online Elo over the games in order, centred to a mean of 1000."""
    ratings = {m: initial for m in _models(games)}
    for g in games:
        expected = 1 / (1 + 10 ** ((ratings[g.b] - ratings[g.a]) / 400))
        change = k * (OUTCOMES[g.winner] - expected)
        ratings[g.a] += change
        ratings[g.b] -= change
    if ratings:
        shift = 1000 - sum(ratings.values()) / len(ratings)
        ratings = {m: r + shift for m, r in ratings.items()}
    return ratings


def leaderboard(
    games: Sequence[Game],
    method: str = "bradley_terry",
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per model, best first: rating with its bootstrap interval, and the record
    (wins, losses, ties, games)."""
    if method not in ("bradley_terry", "elo"):
        raise ValueError(f"method must be 'bradley_terry' or 'elo', got {method!r}")
    fit = bradley_terry if method == "bradley_terry" else elo
    games = list(games)
    models = _models(games)
    record = {m: Counter() for m in models}
    for g in games:
        if g.winner == "tie":
            record[g.a]["ties"] += 1
            record[g.b]["ties"] += 1
        else:
            win, lose = (g.a, g.b) if g.winner == "a" else (g.b, g.a)
            record[win]["wins"] += 1
            record[lose]["losses"] += 1
    # one resampling of the games refits every model's rating at once
    import numpy as np

    full = fit(games)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(resamples):
        sample = fit([games[i] for i in rng.integers(0, len(games), len(games)).tolist()])
        for m in models:
            if m in sample:  # a model absent from a resample has no rating there
                draws[m].append(sample[m])
    tail = (1 - level) / 2 * 100
    rows = []
    for m in models:
        low, high = np.percentile(draws[m], [tail, 100 - tail]) if draws[m] else (full[m],) * 2
        r = record[m]
        rows.append(
            {
                "model": m,
                "rating": full[m],
                "low": float(low),
                "high": float(high),
                "wins": r["wins"],
                "losses": r["losses"],
                "ties": r["ties"],
                "games": r["wins"] + r["losses"] + r["ties"],
            }
        )
    return sorted(rows, key=lambda row: -row["rating"])
