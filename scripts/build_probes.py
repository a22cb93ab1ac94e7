"""Build tuneloop's general-ability probe set (src/tuneloop/evaluation/probes/general.jsonl).

Written by the tuneloop team for the forgetting check: after fine-tuning on a narrow task,
does the model still do ordinary things? Every item is a short instruction with one
checkable reference answer, so exact match, token F1 and judges can score it. Part of
the items are hand-written (facts, rewriting, sentiment, extraction, JSON, code,
reasoning, formatting, translation of common words); the arithmetic, unit and string
items are generated from templates with a fixed seed, their answers computed here.

    python scripts/build_probes.py      # rewrites the JSONL; the file is what ships
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/tuneloop/evaluation/probes/general.jsonl"
NUM = " Answer with the number only."
WORD = " Answer with one word."

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Argentina", "Buenos Aires"),
    ("Thailand", "Bangkok"),
    ("Sweden", "Stockholm"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
]

SCIENCE = [
    ("What gas do plants take in from the air for photosynthesis?", "carbon dioxide"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many legs does an insect have?", "6"),
    ("What planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("At what temperature in degrees Celsius does water freeze at sea level?", "0"),
    ("What is the chemical formula of water?", "H2O"),
    ("Which organ pumps blood through the human body?", "the heart"),
    ("What force keeps the planets in orbit around the Sun?", "gravity"),
    ("What is the closest star to the Earth?", "the Sun"),
    ("How many days does the Earth take to orbit the Sun, rounded to a whole number?", "365"),
    ("What is the hardest natural substance?", "diamond"),
    ("What part of the cell contains the genetic material in plants and animals?", "the nucleus"),
    ("Which gas makes up most of the Earth's atmosphere?", "nitrogen"),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100"),
]

OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("early", "late"),
    ("empty", "full"),
    ("win", "lose"),
    ("open", "closed"),
    ("light", "dark"),
    ("buy", "sell"),
    ("before", "after"),
    ("ancient", "modern"),
    ("increase", "decrease"),
    ("maximum", "minimum"),
    ("arrive", "depart"),
    ("inside", "outside"),
    ("accept", "reject"),
]

REWRITES = [
    ("Rewrite in the past tense: 'She walks to school.'", "She walked to school."),
    (
        "Rewrite in the past tense: 'They play football on Sundays.'",
        "They played football on Sundays.",
    ),
    ("Rewrite in the past tense: 'I write a letter.'", "I wrote a letter."),
    ("Rewrite in the past tense: 'He eats an apple.'", "He ate an apple."),
    ("Rewrite in the past tense: 'We see the mountains.'", "We saw the mountains."),
    ("Rewrite in the plural: 'The child reads a book.'", "The children read books."),
    ("Rewrite in the plural: 'The mouse runs away.'", "The mice run away."),
    ("Rewrite in the plural: 'A woman is waiting.'", "Women are waiting."),
    (
        "Correct the spelling: 'I recieved the pakage yesterday.'",
        "I received the package yesterday.",
    ),
    ("Correct the spelling: 'The wether is beautifull today.'", "The weather is beautiful today."),
    ("Correct the grammar: 'She don't like coffee.'", "She doesn't like coffee."),
    ("Correct the grammar: 'They was late for the meeting.'", "They were late for the meeting."),
    ("Correct the grammar: 'He have two brothers.'", "He has two brothers."),
    ("Rewrite as a question: 'The train leaves at noon.'", "Does the train leave at noon?"),
    ("Rewrite as a question: 'You can swim.'", "Can you swim?"),
    (
        "Rewrite in the passive voice: 'The cat chased the mouse.'",
        "The mouse was chased by the cat.",
    ),
    (
        "Rewrite in the passive voice: 'The chef cooked the meal.'",
        "The meal was cooked by the chef.",
    ),
    ("Make this sentence negative: 'I like spinach.'", "I do not like spinach."),
    ("Make this sentence negative: 'She is ready.'", "She is not ready."),
    (
        "Rewrite in the future tense: 'We visit our grandparents.'",
        "We will visit our grandparents.",
    ),
]

SENTIMENT = [
    ("The food was cold and the staff were rude.", "negative"),
    ("Absolutely loved the concert, best night of the year!", "positive"),
    ("The battery died after two hours. Very disappointed.", "negative"),
    ("Fast delivery and the shoes fit perfectly.", "positive"),
    ("I waited forty minutes and nobody answered the phone.", "negative"),
    ("The hotel room was spotless and the view was stunning.", "positive"),
    ("This app keeps crashing every time I open it.", "negative"),
    ("Great value for money, I would buy it again.", "positive"),
    ("The movie was boring and far too long.", "negative"),
    ("Friendly teachers and my son enjoys every lesson.", "positive"),
    ("The package arrived damaged and half the items were missing.", "negative"),
    ("What a wonderful surprise, thank you so much!", "positive"),
    ("The instructions were confusing and the parts did not match.", "negative"),
    ("Comfortable seats and a smooth, quiet ride.", "positive"),
    ("I regret buying this blender; it leaks.", "negative"),
]

EXTRACTION = [
    ("Extract the year from: 'The bridge opened in 1932 after four years of work.'", "1932"),
    ("Extract the city from: 'Our new office in Lisbon opens next month.'", "Lisbon"),
    (
        "Extract the email address from: 'Write to help@example.org for support.'",
        "help@example.org",
    ),
    ("Extract the price from: 'The ticket costs $45 including fees.'", "$45"),
    (
        "Extract the person's name from: 'Yesterday, Maria Lopez won the chess final.'",
        "Maria Lopez",
    ),
    ("Extract the date from: 'The meeting moved to 14 March 2025.'", "14 March 2025"),
    (
        "Extract the number of employees from: 'The firm, founded in 1990, has 350 employees.'",
        "350",
    ),
    ("Extract the colour from: 'She bought a green umbrella for the trip.'", "green"),
    ("Extract the language from: 'The manual is only available in German.'", "German"),
    (
        "Extract the company name from: 'Shares of Northwind Traders rose 4% on Monday.'",
        "Northwind Traders",
    ),
    ("Extract the duration from: 'The flight to Singapore takes 13 hours.'", "13 hours"),
    ("Extract the phone number from: 'Call us on 555-0142 before noon.'", "555-0142"),
    ("Extract the animal from: 'A fox crossed the road at dawn.'", "fox"),
    ("Extract the percentage from: 'Unemployment fell to 3.9% last quarter.'", "3.9%"),
    ("Extract the destination from: 'This train terminates at Edinburgh.'", "Edinburgh"),
]

JSON_ITEMS = [
    (
        "Return a JSON object with keys name and age for: Anna is 31 years old.",
        '{"name": "Anna", "age": 31}',
    ),
    (
        "Return a JSON object with keys city and country for: Kyoto is in Japan.",
        '{"city": "Kyoto", "country": "Japan"}',
    ),
    ("Return a JSON list of the even numbers among 3, 4, 7, 8, 10.", "[4, 8, 10]"),
    (
        "Return a JSON object with keys product and quantity for: order 3 lamps.",
        '{"product": "lamp", "quantity": 3}',
    ),
    ("Return a JSON object with key valid set to true.", '{"valid": true}'),
    ("Return a JSON list of the words in 'red green blue', in order.", '["red", "green", "blue"]'),
    (
        "Return a JSON object mapping each letter of 'ab' to its position starting at 1.",
        '{"a": 1, "b": 2}',
    ),
    (
        "Return a JSON object with keys title and year for: the film Alien came out in 1979.",
        '{"title": "Alien", "year": 1979}',
    ),
    ("Return an empty JSON list.", "[]"),
    (
        "Return a JSON object with keys from and to for: a flight from Oslo to Rome.",
        '{"from": "Oslo", "to": "Rome"}',
    ),
]

CODE = [
    ("Write a Python expression that returns the length of the list xs.", "len(xs)"),
    ("Write a Python expression that returns the last element of the list xs.", "xs[-1]"),
    ("Write a Python expression that converts the string s to upper case.", "s.upper()"),
    ("Write a Python expression that returns the sum of the list xs.", "sum(xs)"),
    ("Write a Python expression that reverses the string s.", "s[::-1]"),
    ("Write a Python expression that returns the largest value in the list xs.", "max(xs)"),
    (
        "Write a Python expression that returns a new list with the items of xs in "
        "ascending order.",
        "sorted(xs)",
    ),
    ("Write a Python expression that checks whether the integer n is even.", "n % 2 == 0"),
    ("Write a Python expression that splits the string s on commas.", "s.split(',')"),
    ("Write a Python expression that returns the keys of the dictionary d as a list.", "list(d)"),
]

REASONING = [
    ("Tom is taller than Ann. Ann is taller than Bob. Who is the shortest?", "Bob"),
    ("If today is Monday, what day will it be in three days?", "Thursday"),
    ("A box has 3 red balls and 5 blue balls. How many balls are in the box?", "8"),
    ("Sara is older than Lee. Lee is older than Kim. Who is the oldest?", "Sara"),
    ("If a shop opens at 9 and closes 8 hours later, at what hour does it close?", "17"),
    ("All cats are animals. Tom is a cat. Is Tom an animal? Answer yes or no.", "yes"),
    (
        "Which is heavier: a kilogram of feathers or a kilogram of iron? Answer 'same' if equal.",
        "same",
    ),
    ("I have 10 apples and give away 4. How many do I have left?", "6"),
    ("What comes next in the sequence 2, 4, 6, 8?", "10"),
    ("What comes next in the sequence 1, 4, 9, 16?", "25"),
    ("If it is 3 o'clock now, what time will it be in 10 hours on a 12-hour clock?", "1 o'clock"),
    (
        "A train leaves at 14:00 and arrives at 16:30. How long is the journey?",
        "2 hours 30 minutes",
    ),
    ("Mia has twice as many books as Leo. Leo has 7 books. How many books does Mia have?", "14"),
    ("Which month comes after April?", "May"),
    (
        "If all squares are rectangles, and this shape is a square, is it a rectangle? "
        "Answer yes or no.",
        "yes",
    ),
]

FORMAT = [
    ("List the three primary colours of paint, separated by commas.", "red, yellow, blue"),
    (
        "Name the first three days of the week, starting with Monday, separated by commas.",
        "Monday, Tuesday, Wednesday",
    ),
    ("Write the numbers one to five as digits separated by spaces.", "1 2 3 4 5"),
    ("Answer with only 'yes' or 'no': is the Pacific an ocean?", "yes"),
    ("Write the word 'hello' in capital letters.", "HELLO"),
    ("Give the first letter of the alphabet.", "A"),
    ("Write the months of the year that start with J, separated by commas.", "January, June, July"),
    ("Write the vowels of the English alphabet in order, separated by commas.", "a, e, i, o, u"),
    ("Repeat exactly: 'Data is versioned.'", "Data is versioned."),
    ("Answer with a single number: how many sides does a triangle have?", "3"),
]

TRANSLATE = [
    ("Translate 'thank you' into French.", "merci"),
    ("Translate 'good morning' into Spanish.", "buenos días"),
    ("Translate 'cat' into German.", "Katze"),
    ("Translate 'water' into Spanish.", "agua"),
    ("Translate 'house' into French.", "maison"),
    ("Translate 'book' into Italian.", "libro"),
    ("Translate 'yes' into German.", "ja"),
    ("Translate 'friend' into Spanish.", "amigo"),
    ("Translate 'bread' into French.", "pain"),
    ("Translate 'one' into Italian.", "uno"),
]

WORDS = [
    "planet",
    "garden",
    "window",
    "silver",
    "market",
    "rocket",
    "pencil",
    "forest",
    "bridge",
    "candle",
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog",
    "Fine tuning needs good data",
    "Rain is expected later this evening",
    "Every model forgets something",
    "She sells sea shells by the sea shore",
]


def templated(rng: random.Random) -> list[tuple[str, str, str]]:
    items: list[tuple[str, str, str]] = []
    for _ in range(10):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        items.append(("arithmetic", f"What is {a} + {b}?{NUM}", str(a + b)))
    for _ in range(8):
        a, b = rng.randint(50, 199), rng.randint(1, 49)
        items.append(("arithmetic", f"What is {a} - {b}?{NUM}", str(a - b)))
    for _ in range(8):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        items.append(("arithmetic", f"What is {a} times {b}?{NUM}", str(a * b)))
    for _ in range(4):
        b, q = rng.randint(2, 9), rng.randint(2, 12)
        items.append(("arithmetic", f"What is {b * q} divided by {b}?{NUM}", str(q)))
    units = [
        ("hours", "minutes", 60),
        ("minutes", "seconds", 60),
        ("days", "hours", 24),
        ("weeks", "days", 7),
        ("metres", "centimetres", 100),
        ("kilometres", "metres", 1000),
        ("kilograms", "grams", 1000),
        ("years", "months", 12),
    ]
    for k in range(15):
        big, small, factor = units[k % len(units)]
        n = rng.randint(2, 9)
        items.append(("units", f"How many {small} are in {n} {big}?{NUM}", str(n * factor)))
    for w in rng.sample(WORDS, 5):
        items.append(("strings", f"Write the word '{w}' backwards.", w[::-1]))
    for w in rng.sample(WORDS, 5):
        items.append(("strings", f"How many letters are in the word '{w}'?{NUM}", str(len(w))))
    for s in SENTENCES:
        items.append(
            ("strings", f"How many words are in this sentence: '{s}'?{NUM}", str(len(s.split())))
        )
    for _ in range(5):
        trio = rng.sample(WORDS, 3)
        items.append(
            (
                "strings",
                f"Sort these words alphabetically, separated by commas: {', '.join(trio)}.",
                ", ".join(sorted(trio)),
            )
        )
    return items


def build() -> list[dict]:
    rng = random.Random(20261121)
    items: list[tuple[str, str, str]] = []
    for item in templated(rng):  # a template can draw the same question twice: keep one
        if all(item[1] != seen[1] for seen in items):
            items.append(item)
    items += [
        (
            "facts",
            f"What is the capital of {c}?{WORD}"
            if " " not in cap
            else f"What is the capital of {c}?",
            cap,
        )
        for c, cap in CAPITALS
    ]
    items += [("science", q, a) for q, a in SCIENCE]
    items += [("vocabulary", f"What is the opposite of '{w}'?{WORD}", o) for w, o in OPPOSITES]
    items += [("rewriting", q, a) for q, a in REWRITES]
    items += [
        ("sentiment", f"Is the sentiment of this review positive or negative? '{t}'{WORD}", a)
        for t, a in SENTIMENT
    ]
    items += [("extraction", q, a) for q, a in EXTRACTION]
    items += [("json", q + " Answer with the JSON only.", a) for q, a in JSON_ITEMS]
    items += [("code", q + " Answer with the expression only.", a) for q, a in CODE]
    items += [("reasoning", q, a) for q, a in REASONING]
    items += [("format", q, a) for q, a in FORMAT]
    items += [("translation", q + WORD if " " not in a else q, a) for q, a in TRANSLATE]
    rows = []
    for k, (category, question, answer) in enumerate(items):
        rows.append(
            {
                "id": f"general-{k:03d}",
                "category": category,
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def main() -> None:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(OUT)
    print(f"{len(rows)} probes -> {OUT}")


if __name__ == "__main__":
    main()
