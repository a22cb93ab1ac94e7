"""Build the general prompts for self-distilled replay (src/tuneloop/training/replay_prompts.jsonl).

Written by the tuneloop team for `training.replay` (docs/training.md, "Keep what the model
knew"): while a model is fine-tuned on a narrow task, a share of its batches are the base
model's own answers to ordinary requests, so it keeps answering those as it did. The
categories follow the forgetting probes (evaluation/probes/general.jsonl) so replay covers
what the check measures, but no prompt is a probe: the probes must stay unseen by training,
or the check would measure memory instead of forgetting. The builder drops any prompt that
matches a probe (case and spacing aside) and a test holds that.

Only prompts are stored: the answers are the base model's, generated at training time and
cached per base model.

    python scripts/build_replay_prompts.py      # rewrites the JSONL; the file is what ships
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/tuneloop/training/replay_prompts.jsonl"
PROBES = ROOT / "src/tuneloop/evaluation/probes/general.jsonl"
NUM = " Answer with the number only."
WORD = " Answer with one word."

COUNTRIES = [
    ("Brazil", "Brasília"),
    ("Mexico", "Mexico City"),
    ("India", "New Delhi"),
    ("Australia", "Canberra"),
    ("Chile", "Santiago"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Turkey", "Ankara"),
    ("Vietnam", "Hanoi"),
    ("Morocco", "Rabat"),
    ("Hungary", "Budapest"),
    ("Cuba", "Havana"),
    ("Colombia", "Bogotá"),
    ("Belgium", "Brussels"),
    ("Nigeria", "Abuja"),
]
QUESTIONS = [
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Which planet is closest to the Sun?",
    "What do bees make?",
    "How many continents are there?",
    "What is the largest ocean on Earth?",
    "Which animal is known as the king of the jungle?",
    "What colour do you get by mixing blue and yellow?",
    "How many sides does a hexagon have?",
    "What is the main language spoken in Brazil?",
    "What is frozen water called?",
    "Which organ do humans use to breathe?",
    "What is the opposite of north?",
    "How many hours are in a day?",
    "What do caterpillars turn into?",
    "Which metal is liquid at room temperature?",
    "What instrument has black and white keys?",
    "How many minutes are in an hour?",
    "What is the tallest mountain in the world?",
    "Which season comes after winter?",
    "What do you call a baby dog?",
]
WORDS = [
    "garden",
    "window",
    "silver",
    "planet",
    "bridge",
    "forest",
    "candle",
    "rocket",
    "marble",
    "winter",
    "button",
    "ladder",
    "pepper",
    "castle",
    "tunnel",
    "violin",
]
SYNONYMS = ["happy", "quick", "large", "angry", "quiet", "smart", "tired", "brave", "cold", "rich"]
SENTENCES = [
    "The delivery was late and the box was crushed.",
    "I love how simple this app is to use.",
    "The hotel room was clean and the staff were friendly.",
    "My phone stopped working after two days.",
    "The film was long but worth every minute.",
    "Nobody answered my emails for a week.",
    "The soup was cold and bland.",
    "What a wonderful surprise party!",
    "The train was cancelled again this morning.",
    "The new park is a great place for children.",
]
REWRITES = [
    "the committee approved the plan",
    "our team will ship the update next week",
    "the chef cooked a delicious meal",
    "students must submit the essay by Friday",
    "the storm damaged several houses",
    "my neighbour painted the fence",
]
EXTRACTS = [
    ("Please call Maria Lopez at the office on Tuesday.", "the person's name"),
    ("The meeting moved to 14 March 2025 in Lisbon.", "the date"),
    ("Send the invoice to billing@acme.example by Monday.", "the email address"),
    ("Our store on 12 Baker Street opens at 9 am.", "the street address"),
    ("The package weighs 3.5 kg and costs 20 euros to ship.", "the weight"),
    ("Dr. Chen will see you at 4:30 pm.", "the time"),
    ("Flight BA117 leaves from gate 22.", "the flight number"),
    ("Tickets for the concert in Oslo cost 45 dollars.", "the city"),
]
TRANSLATE = [
    ("cat", "French"),
    ("water", "Spanish"),
    ("thank you", "German"),
    ("good night", "Italian"),
    ("house", "Portuguese"),
    ("book", "French"),
    ("friend", "Spanish"),
    ("bread", "German"),
    ("sun", "Italian"),
    ("apple", "Spanish"),
]
JSONS = [
    'Return a JSON object with the keys "city" and "country" for Toronto.',
    "Give a JSON list of the first three prime numbers.",
    "Write a JSON object describing a book with a title, an author and a year.",
    "Convert this to JSON with keys name and age: Ana is 31.",
    'Return a JSON object with a key "colors" holding three colour names.',
    "Write a JSON object for a product with a name, a price and a boolean in_stock.",
    "Give a JSON object mapping the numbers one, two and three to digits.",
    'Return JSON with the key "ok" set to true and the key "count" set to 5.',
]
CODE = [
    "Write a Python function that returns the square of a number.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python one-liner that sums a list called values.",
    "Write a SQL query that selects all rows from a table named users.",
    "Write a Python function that returns the largest item of a list.",
    "Write a JavaScript function that adds two numbers.",
    "Write a Python loop that prints the numbers 1 to 5.",
    "Write a Python function that counts the vowels in a string.",
]
FORMATS = [
    "List three fruits as a bulleted list.",
    "Give two tips for better sleep as a numbered list.",
    "Write the days of the weekend separated by commas.",
    "Name four colours, one per line.",
    "Write a haiku about the sea.",
    "Write a one-sentence summary of why exercise is healthy.",
    "List three European countries in alphabetical order.",
    "Give a title in Title Case for an article about saving money.",
]


def build() -> list[dict[str, str]]:
    rng = random.Random(20261202)
    items: list[tuple[str, str]] = []
    for _ in range(12):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        items.append(("arithmetic", f"What is {a} + {b}?{NUM}"))
        c, d = rng.randint(50, 99), rng.randint(1, 49)
        items.append(("arithmetic", f"What is {c} - {d}?{NUM}"))
    for _ in range(8):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        items.append(("arithmetic", f"What is {a} times {b}?{NUM}"))
    units = [
        ("kilometres", "metres", 1000),
        ("hours", "minutes", 60),
        ("weeks", "days", 7),
        ("metres", "centimetres", 100),
        ("minutes", "seconds", 60),
        ("dozens", "eggs", 12),
    ]
    for k in range(12):
        big, small, _ = units[k % len(units)]
        items.append(("units", f"How many {small} are in {rng.randint(2, 9)} {big}?{NUM}"))
    for w in WORDS:
        items.append(("strings", f"Write the word '{w}' in capital letters."))
        items.append(("strings", f"What is the first letter of the word '{w}'?"))
    for country, _ in COUNTRIES:
        items.append(("facts", f"What is the capital of {country}?{WORD}"))
    items += [("science", q) for q in QUESTIONS]
    for w in SYNONYMS:
        items.append(("vocabulary", f"Give a synonym of '{w}'.{WORD}"))
        items.append(("vocabulary", f"What is the opposite of '{w}'?{WORD}"))
    for s in SENTENCES:
        items.append(("sentiment", f'Is this review positive or negative? "{s}"{WORD}'))
    for s in REWRITES:
        items.append(("rewriting", f"Rewrite in the passive voice: {s}."))
        items.append(("rewriting", f"Rewrite as a question: {s}."))
    for text, what in EXTRACTS:
        items.append(("extraction", f'Extract {what} from this text: "{text}"'))
    for word, language in TRANSLATE:
        items.append(("translation", f"Translate '{word}' into {language}."))
    items += [("json", p) for p in JSONS]
    items += [("code", p) for p in CODE]
    items += [("format", p) for p in FORMATS]
    for _ in range(8):
        a, b = rng.randint(3, 9), rng.randint(2, 6)
        items.append(
            (
                "reasoning",
                f"Sam has {a} boxes with {b} pens in each. How many pens does Sam have?{NUM}",
            )
        )

    probes = {
        _norm(m["content"])
        for line in PROBES.read_text().splitlines()
        for m in json.loads(line)["messages"]
        if m["role"] == "user"
    }
    seen: set[str] = set()
    rows = []
    for category, prompt in items:
        key = _norm(prompt)
        if key in probes or key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "id": f"replay-{len(rows):03d}",
                "category": category,
                "messages": [{"role": "user", "content": prompt}],
            }
        )
    return rows


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


if __name__ == "__main__":
    rows = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    print(f"{len(rows)} replay prompts -> {OUT}")
