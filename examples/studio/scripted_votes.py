"""Stand-in annotators for trying the studio without people: they log in to a running
`tuneloop studio` over HTTP, take items as a browser would, and vote on a compare task.

Each prefers the answer closer to the item's reference answer (ROUGE-L F1, a tie when the
two are within 0.02); the second flips a share of its votes at random, so that agreement
is not trivially perfect. These are NOT human judgments: use them to see the mechanics
(agreement, the leaderboard, exports, training on the export), never as evidence about a
model.

    python examples/studio/scripted_votes.py http://127.0.0.1:8080 TASK_ID \
        alice:PASSWORD bob:PASSWORD --flip 0.15
"""

from __future__ import annotations

import argparse
import random
import re

import requests
from rouge_score import rouge_scorer


def login(url: str, name: str, password: str) -> tuple[requests.Session, str]:
    s = requests.Session()
    token = re.search(r'name="csrf" value="([^"]+)"', s.get(url + "/login").text).group(1)
    r = s.post(
        url + "/login",
        data={"csrf": token, "name": name, "password": password},
        allow_redirects=False,
    )
    if r.status_code != 303:
        raise SystemExit(f"login as {name} failed ({r.status_code})")
    return s, s.get(url + "/api/me").json()["csrf"]


def vote(url: str, task: int, name: str, password: str, flip: float, seed: int) -> int:
    s, csrf = login(url, name, password)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(seed)
    done = 0
    take = f"{url}/api/tasks/{task}/next"  # a POST: taking an item reserves a place
    while (item := s.post(take, headers={"X-CSRF-Token": csrf}).json()["item_id"]) is not None:
        view = s.get(f"{url}/api/tasks/{task}/items/{item}").json()
        ref = view.get("reference") or ""
        a, b = (scorer.score(ref, x["text"])["rougeL"].fmeasure for x in view["answers"])
        choice = "tie" if abs(a - b) < 0.02 else ("a" if a > b else "b")
        if choice != "tie" and rng.random() < flip:
            choice = {"a": "b", "b": "a"}[choice]
        r = s.post(
            f"{url}/api/tasks/{task}/items/{item}",
            headers={"X-CSRF-Token": csrf},
            json={"value": {"choice": choice}, "version": view["version"], "submit": True},
        )
        r.raise_for_status()
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("task", type=int)
    parser.add_argument("annotators", nargs="+", help="NAME:PASSWORD")
    parser.add_argument("--flip", type=float, default=0.15, help="second annotator's flips")
    args = parser.parse_args()
    for i, who in enumerate(args.annotators):
        name, password = who.split(":", 1)
        n = vote(args.url, args.task, name, password, args.flip if i else 0.0, seed=i)
        print(f"{name}: {n} votes")


if __name__ == "__main__":
    main()
