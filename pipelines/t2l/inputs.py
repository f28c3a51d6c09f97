"""The shared input pools of the synthetic T2L tasks: short questions with known one- or two-word answers, and
short phrases for the text procedures. Everything is built by code from small tables; nothing is downloaded.

A question's plain ``answer`` is what a behaviour then reformats ("Paris" -> ``{"city": "Paris"}``); a phrase's
``answer`` is the phrase itself (procedures transform it). The pools are split into training and held-out inputs
by a seeded shuffle (:func:`split_inputs`), so held-out evaluation never sees a training input.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Item", "number_words", "phrase_items", "qa_items", "split_inputs"]


@dataclass(frozen=True)
class Item:
    """One input: the user's message (``prompt``), its plain answer, and which families may use it."""

    kind: str  # "qa": a question; "text": a phrase for a procedure
    prompt: str
    answer: str
    topic: str


_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Egypt": "Cairo",
    "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
    "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw", "Portugal": "Lisbon", "Cuba": "Havana",
    "Canada": "Ottawa", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
    "Hungary": "Budapest", "Thailand": "Bangkok", "England": "London", "Chile": "Santiago", "Turkey": "Ankara",
    "Iran": "Tehran", "Mexico": "Mexico City", "Argentina": "Buenos Aires",
}  # fmt: skip
_OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad", "light": "dark",
    "open": "closed", "wet": "dry", "hard": "soft", "early": "late", "full": "empty", "rich": "poor", "high": "low",
    "long": "short", "loud": "quiet", "thick": "thin", "strong": "weak", "first": "last", "win": "lose",
    "push": "pull", "buy": "sell", "left": "right", "in": "out",
}  # fmt: skip
_COLOURS = {
    "the sky": "blue", "grass": "green", "a banana": "yellow", "snow": "white", "coal": "black", "a tomato": "red",
    "a lemon": "yellow", "chocolate": "brown", "a carrot": "orange", "milk": "white", "a strawberry": "red",
    "a lime": "green", "a crow": "black", "blood": "red", "a frog": "green", "an eggplant": "purple",
}  # fmt: skip
_PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
    "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves", "box": "boxes",
    "city": "cities", "baby": "babies", "fish": "fish", "sheep": "sheep",
}  # fmt: skip
_SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink", "owl": "hoot",
           "lion": "roar", "snake": "hiss", "horse": "neigh", "bee": "buzz", "frog": "ribbit"}  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]  # fmt: skip

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0..99 in English words ("twenty-one")."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words covers 0..99, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def qa_items() -> list[Item]:
    """About 260 questions with short known answers (capitals, sums, opposites, colours, plurals, sounds, dates)."""
    items = [Item("qa", f"What is the capital of {c}?", a, "capital") for c, a in _CAPITALS.items()]
    items += [Item("qa", f"What is {a} plus {b}?", str(a + b), "sum") for a in range(1, 10) for b in range(1, 10)]
    items += [Item("qa", f"What is {a} minus {b}?", str(a - b), "difference")
              for a in range(5, 13) for b in range(1, 5)]  # fmt: skip
    items += [Item("qa", f"What is the opposite of {w}?", o, "opposite") for w, o in _OPPOSITES.items()]
    items += [Item("qa", f"What colour is {t}?", c, "colour") for t, c in _COLOURS.items()]
    items += [Item("qa", f"What is the plural of {w}?", p, "plural") for w, p in _PLURALS.items()]
    items += [Item("qa", f"What sound does a {a} make?", s, "sound") for a, s in _SOUNDS.items()]
    items += [Item("qa", f"Which day comes after {d}?", _DAYS[(i + 1) % 7], "day") for i, d in enumerate(_DAYS)]
    items += [Item("qa", f"Which month comes after {m}?", _MONTHS[(i + 1) % 12], "month")
              for i, m in enumerate(_MONTHS)]  # fmt: skip
    return items


_ADJ = ["red", "quiet", "small", "happy", "old", "green", "lazy", "bright", "cold", "brave", "tiny", "loud"]
_NOUN = ["fox", "river", "child", "robot", "garden", "teacher", "window", "horse", "city", "baker", "storm", "ship"]
_VERB = ["runs", "sleeps", "waits", "sings", "grows", "shines", "moves", "falls", "works", "jumps", "turns", "rests"]
_ADV = ["fast", "slowly", "today", "again", "outside", "early", "alone", "softly", "here", "now"]


def phrase_items(n: int = 300, seed: int = 0) -> list[Item]:
    """``n`` distinct lowercase phrases of 3-5 words ("the red fox runs fast")."""
    rng = random.Random(f"phrases:{seed}")
    seen: set[str] = set()
    out: list[Item] = []
    while len(out) < n:
        words = ["the", rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_VERB), rng.choice(_ADV)]
        shape = rng.randrange(3)  # drop the article, the adjective, or nothing: 3-5 words
        if shape == 1:
            words = words[1:]
        elif shape == 2:
            words = [words[0], *words[2:]]
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            out.append(Item("text", text, text, "phrase"))
    return out


def split_inputs(items: list[Item], seed: int, heldout_share: float = 0.2) -> tuple[list[Item], list[Item]]:
    """(training, held-out) inputs: a seeded shuffle, stratified by topic so both sides see every topic."""
    train: list[Item] = []
    held: list[Item] = []
    for topic in sorted({i.topic for i in items}):
        group = [i for i in items if i.topic == topic]
        random.Random(f"split:{seed}:{topic}").shuffle(group)
        k = max(1, round(len(group) * heldout_share))
        held += group[:k]
        train += group[k:]
    return train, held
