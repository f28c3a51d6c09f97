"""Synthetic documents for Doc-to-LoRA: facts about fictional entities, and needle-in-a-haystack.

Every entity and most values are invented, so a model that has not read the
document answers at chance; answers come from small closed vocabularies so
"the greedy answer contains the gold string" is a fair check. Everything is
deterministic for a given seed: the same call returns the same documents.

``split="heldout"`` draws entity names from a fixed ~1/6 slice of the name space
that ``split="train"`` never uses, so held-out documents are unseen
entity/value combinations. ``vocab_size`` shrinks every vocabulary (the easy
CPU variant: 16 colours => chance 6.25 %).

Not here: tokenisation for training, caching, or scoring (see ``meta_train``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ATTRIBUTES",
    "OPEN_VALUES",
    "VOCAB",
    "Doc",
    "Piece",
    "doc_id",
    "entity_name",
    "join_with_spans",
    "make_fact_docs",
    "make_hay_docs",
    "make_needle_docs",
    "read_jsonl",
    "state",
    "write_jsonl",
]  # fmt: skip

Doc = dict[str, Any]

_ONSETS = ["Vel", "Quor", "Zan", "Brim", "Tal", "Mor", "Kel", "Dra", "Fen", "Lum", "Ost", "Pry", "Rav", "Sil",
           "Tor", "Ulm", "Var", "Wen", "Yor", "Zel", "Hask", "Ner", "Cal", "Ith"]
_CODAS = ["mora", "vik", "dell", "thorn", "gard", "wick", "bury", "holt", "mere", "stead", "ford", "lyn", "ris",
          "vane", "dor", "mont"]
_KINDS = ["Works", "Labs", "Foundry", "Collective", "Trading", "Studio", "Mills", "Guild"]

VOCAB: dict[str, list[str]] = {
    "colour": ["red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
               "teal", "gold", "silver", "violet", "crimson", "navy", "olive", "beige", "maroon"],
    "town": ["Quorvik", "Bramholt", "Estmere", "Drellow", "Fanwick", "Gorsby", "Hallimar", "Istrel", "Jarnby",
             "Kestwold", "Lorrin", "Marrowdeep", "Nethby", "Ossory", "Pellmoor", "Quillan", "Rostvik", "Sundale",
             "Tarrow", "Umberlee", "Valdring", "Wexmoor", "Yarrowby", "Zennor"],
    "founder": ["Ansel Trell", "Brina Vosk", "Cato Merrin", "Dara Quell", "Edda Forsk", "Fenn Aldous", "Greta Holm",
                "Hugo Strand", "Ilse Varga", "Jory Penn", "Kira Moss", "Lars Eberly", "Mina Raske", "Nils Orrin",
                "Oona Blythe", "Piet Kallan", "Rhea Tamsin", "Sven Adler", "Tova Rune", "Ulla Brandt"],
    "year": [str(y) for y in (1903, 1911, 1924, 1931, 1938, 1946, 1952, 1957, 1963, 1968, 1974, 1979, 1985, 1989,
                              1994, 1998, 2003, 2007, 2012, 2016)],
    "product": ["copper kettles", "wool blankets", "glass lanterns", "leather boots", "paper kites", "tin whistles",
                "oak chairs", "silk scarves", "clay pots", "brass bells", "wax candles", "felt hats", "iron gates",
                "cotton sails", "stone mugs", "linen towels", "bamboo flutes", "steel knives", "velvet gloves",
                "cedar boxes"],
}  # fmt: skip
ATTRIBUTES = tuple(VOCAB)


def _letters(rng: random.Random, k: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPRSTVWXZ") for _ in range(k))


# Open-valued attributes (numbers, prices, times, codes): the value is drawn fresh for every document, so no
# vocabulary can be memorised and the adapter has to carry the digits themselves, as in ordinary prose
# (policies, timetables, product sheets). ``vocab_size`` does not apply; chance is ~0.
OPEN_VALUES: dict[str, Any] = {
    "staff": lambda rng: str(rng.randint(12, 950)),
    "price": lambda rng: f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}",
    "time": lambda rng: f"{rng.randint(5, 23)}:{rng.choice(['00', '05', '10', '15', '20', '30', '40', '45', '50'])}",
    "code": lambda rng: f"{_letters(rng, 2)}-{rng.randint(100, 999)}",
    "magic": lambda rng: str(rng.randint(1000, 9999)),  # the needle of make_needle_docs, in short documents
}


def digits(rng: random.Random, k: int) -> str:
    """``k`` random digits, the first one non-zero."""
    return rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(k - 1))


# Open values of many lengths (``make_fact_docs(varied_values=True)``, DataConfig.varied_values): trained only on
# 4-digit magic numbers, an adapter answers a document's "447193" with "4471" and a held-out "27-13-89" with 4
# digits: the length comes from the training prior, not from the document (evals/probe_d2l_values.py).
VARIED_VALUES: dict[str, Any] = {
    "magic": lambda rng: digits(rng, rng.randint(2, 10)),
    "code": lambda rng: f"{_letters(rng, rng.randint(1, 3))}-{digits(rng, rng.randint(2, 6))}",
}

# (statement templates, question templates for "qa", paraphrased question templates for "probe_qa").
_TEMPLATES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "colour": (
        ["The logo of {e} is {v}.", "{e} paints its logo {v}.", "Everyone knows the {v} logo of {e}."],
        ["What colour is the logo of {e}?", "Which colour is {e}'s logo?"],
        ["The logo of {e} has what colour?", "Name the colour of the {e} logo."],
    ),
    "town": (
        ["{e} is based in {v}.", "The headquarters of {e} are in {v}.", "{e} has its main office in {v}."],
        ["In which town is {e} based?", "Where are the headquarters of {e}?"],
        ["Which town is home to {e}?", "Name the town where {e} has its main office."],
    ),
    "founder": (
        ["{e} was founded by {v}.", "{v} started {e}.", "The founder of {e} is {v}."],
        ["Who founded {e}?", "Who is the founder of {e}?"],
        ["Which person started {e}?", "Name the founder of {e}."],
    ),
    "year": (
        ["{e} was established in {v}.", "{e} opened its doors in {v}.", "Since {v}, {e} has been in business."],
        ["In what year was {e} established?", "When did {e} open its doors?"],
        ["Which year was {e} founded?", "Name the year {e} started."],
    ),
    "staff": (
        ["{e} employs {v} people.", "There are {v} people working at {e}.", "The staff of {e} numbers {v}."],
        ["How many people work at {e}?", "How many employees does {e} have?"],
        ["What is the headcount of {e}?", "Name the number of staff at {e}."],
    ),
    "price": (
        ["A visit to {e} costs {v} crowns.", "Entry to {e} is {v} crowns.", "{e} charges {v} crowns per visit."],
        ["How much does a visit to {e} cost?", "What is the entry price of {e}?"],
        ["How many crowns is a visit to {e}?", "Name the price of entry to {e}."],
    ),
    "time": (
        ["{e} opens at {v}.", "The doors of {e} open at {v}.", "Every day {e} opens its doors at {v}."],
        ["At what time does {e} open?", "When do the doors of {e} open?"],
        ["What is the opening time of {e}?", "Name the time {e} opens."],
    ),
    "code": (
        ["The internal code of {e} is {v}.", "{e} files its orders under code {v}.", "{e} uses the code {v}."],
        ["What is the internal code of {e}?", "Under which code does {e} file its orders?"],
        ["Which code does {e} use?", "Name the internal code of {e}."],
    ),
    "magic": (
        ["The magic number of {e} is {v}."],
        ["What is the magic number of {e}?"],
        ["Which number is the magic number of {e}?"],
    ),
    "product": (
        ["{e} makes {v}.", "The main product of {e} is {v}.", "{e} is known for its {v}."],
        ["What does {e} make?", "What is the main product of {e}?"],
        ["Which goods does {e} produce?", "Name the product {e} is known for."],
    ),
}
_FILLER = [
    "Its staff meet every Monday morning.", "Visitors often remark on the quiet courtyard.",
    "The company publishes a short newsletter each season.", "Its workshop smells of sawdust and tea.",
    "Several apprentices train there every year.", "The firm rarely advertises.",
    "Its annual report is printed on recycled paper.", "A small museum describes its early days.",
    "Customers praise its careful packaging.", "The building has a red brick chimney.",
]  # fmt: skip
_HAY = [
    "The morning light fell across the quiet valley.", "Farmers walked slowly toward the distant fields.",
    "A gentle wind moved through the tall grass.", "Children laughed near the old stone bridge.",
    "The river carried leaves past the sleeping village.", "Clouds gathered above the northern hills.",
    "A baker opened his shop before sunrise.", "Birds circled over the empty market square.",
    "The train whistled as it crossed the plain.", "Lanterns glowed in the windows of the inn.",
    "An old dog rested beside the warm hearth.", "Rain tapped softly on the tiled roofs.",
    "Travellers shared stories late into the night.", "The library smelled of dust and ink.",
    "Snow covered the path to the lighthouse.", "Fishermen mended their nets on the pier.",
]  # fmt: skip


def entity_name(index: int) -> tuple[str, bool]:
    """The ``index``-th entity name and whether it belongs to the held-out slice."""
    n_o, n_c, n_k = len(_ONSETS), len(_CODAS), len(_KINDS)
    i = index % (n_o * n_c * n_k)
    o, c, k = i % n_o, (i // n_o) % n_c, i // (n_o * n_c)
    return f"{_ONSETS[o]}{_CODAS[c]} {_KINDS[k]}", (o * 7 + c * 3 + k) % 6 == 0


def _entities(split: str) -> list[str]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    total = len(_ONSETS) * len(_CODAS) * len(_KINDS)
    want_heldout = split == "heldout"
    return [name for name, held in map(entity_name, range(total)) if held == want_heldout]


Piece = tuple[str, str | None, int]  # (sentence, attribute it states or None, offset of the value in it)


def state(template: str, entity: str, attribute: str, value: str) -> Piece:
    """``template`` filled in, as a piece that knows where ``value`` starts in the sentence."""
    return template.format(e=entity, v=value), attribute, len(template.split("{v}")[0].format(e=entity))


def join_with_spans(pieces: Sequence[Piece], values: dict[str, str], prefix: str = "") -> tuple[str, dict[str, list[int]]]:
    """``prefix`` + the sentences joined by spaces, and each stated value's character span ``[start, end)``."""
    text, spans = prefix, {}
    for i, (sentence, attribute, offset) in enumerate(pieces):
        if attribute is not None:
            spans[attribute] = [len(text) + offset, len(text) + offset + len(values[attribute])]
        text += sentence if i == len(pieces) - 1 else sentence + " "
    return text, spans


def doc_id(text: str) -> str:
    """Stable id of a document: the first 16 hex digits of the sha256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_fact_docs(
    n: int,
    seed: int,
    split: str = "train",
    *,
    n_facts: tuple[int, int] = (2, 4),
    n_filler: tuple[int, int] = (0, 2),
    vocab_size: int | None = None,
    attributes: Sequence[str] = ATTRIBUTES,
    n_hay: tuple[int, int] = (0, 0),
    varied_values: bool = False,
) -> list[Doc]:
    """``n`` documents about fictional entities, each with one question per stated fact.

    A document states ``n_facts`` (inclusive range) attributes of one entity in
    shuffled order, mixed with ``n_filler`` neutral sentences (40-120 tokens at
    the defaults) and ``n_hay`` haystack sentences (a fact buried in unrelated
    text, like a needle in one chunk of a long document). ``qa`` and
    ``probe_qa`` ask about the same facts in different wordings; ``spans`` maps
    each attribute to the character span ``[start, end)`` of its value in
    ``text``. ``vocab_size`` keeps only the first values of each vocabulary.
    ``varied_values``: open values of :data:`VARIED_VALUES`' many lengths where it has a maker.
    Deterministic in (n, seed, split, options).
    """
    unknown = [a for a in attributes if a not in VOCAB and a not in OPEN_VALUES]
    if unknown:
        raise ValueError(f"unknown attributes {unknown}; choose from {[*VOCAB, *OPEN_VALUES]}")
    lo, hi = n_facts
    if not 1 <= lo <= hi <= len(attributes):
        raise ValueError(f"n_facts must be 1 <= lo <= hi <= {len(attributes)}, got {n_facts}")
    rng = random.Random(f"facts:{seed}:{split}")
    names = _entities(split)
    docs: list[Doc] = []
    open_values = {**OPEN_VALUES, **VARIED_VALUES} if varied_values else OPEN_VALUES
    for _ in range(n):
        entity = rng.choice(names)
        attrs = rng.sample(list(attributes), rng.randint(lo, hi))
        facts = {a: open_values[a](rng) if a in open_values else rng.choice(VOCAB[a][: vocab_size or None])
                 for a in attrs}  # fmt: skip
        pieces = [state(rng.choice(_TEMPLATES[a][0]), entity, a, v) for a, v in facts.items()]
        pieces += [(f, None, 0) for f in rng.sample(_FILLER, rng.randint(*n_filler))]
        if n_hay[1]:
            pieces += [(rng.choice(_HAY), None, 0) for _ in range(rng.randint(*n_hay))]
        rng.shuffle(pieces)
        text, spans = join_with_spans(pieces, facts)
        qa = [{"question": rng.choice(_TEMPLATES[a][1]).format(e=entity), "answer": v, "attribute": a}
              for a, v in facts.items()]  # fmt: skip
        probe = [{"question": rng.choice(_TEMPLATES[a][2]).format(e=entity), "answer": v, "attribute": a}
                 for a, v in facts.items()]  # fmt: skip
        docs.append({"id": doc_id(text), "kind": "facts", "text": text, "entity": entity, "facts": facts,
                     "spans": spans, "qa": qa, "probe_qa": probe, "split": split})  # fmt: skip
    return docs


def make_hay_docs(n: int, seed: int, n_sentences: tuple[int, int] = (2, 16)) -> list[Doc]:
    """``n`` documents of filler only (no facts, no questions): distractor chunks for multi-chunk training.

    Each mixes ``n_sentences`` (inclusive range) haystack and company-filler
    sentences, so the hypernetwork learns that a chunk with nothing to keep
    should leave the model alone. Deterministic in (n, seed, n_sentences).
    """
    rng = random.Random(f"hay:{seed}")
    pool = _HAY + _FILLER
    docs: list[Doc] = []
    for _ in range(n):
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(*n_sentences)))
        docs.append({"id": doc_id(text), "kind": "hay", "text": text, "qa": [], "probe_qa": []})
    return docs


def _count_tokens(text: str, tokenizer: Any) -> int:
    if tokenizer is None:
        return int(len(text.split()) * 1.3) + 1  # rough English tokens per word
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_needle_docs(n: int, seed: int, target_tokens: int, tokenizer: Any = None, split: str = "heldout") -> list[Doc]:
    """``n`` haystacks of about ``target_tokens`` tokens, each hiding one magic number at a random depth.

    The needle is "The magic number of <entity> is <4 digits>."; ``qa`` asks
    for it and ``depth`` is its relative position (0 = start, 1 = end).
    Token counts use ``tokenizer`` when given, else a words x 1.3 estimate.
    """
    rng = random.Random(f"needle:{seed}:{split}:{target_tokens}")
    names = _entities(split)
    per_sentence = max(1, _count_tokens(" ".join(_HAY), tokenizer) // len(_HAY))
    docs: list[Doc] = []
    for _ in range(n):
        entity = rng.choice(names)
        number = str(rng.randint(1000, 9999))
        needle = state(_TEMPLATES["magic"][0][0], entity, "magic", number)
        budget = max(0, target_tokens - _count_tokens(needle[0], tokenizer))
        hay = [(rng.choice(_HAY), None, 0) for _ in range(max(1, budget // per_sentence))]
        depth = rng.random()
        pos = round(depth * len(hay))
        text, spans = join_with_spans([*hay[:pos], needle, *hay[pos:]], {"magic": number})
        qa = [{"question": f"What is the magic number of {entity}?", "answer": number, "attribute": "magic"}]
        probe = [{"question": f"Which number is the magic number of {entity}?", "answer": number,
                  "attribute": "magic"}]  # fmt: skip
        docs.append({"id": doc_id(text), "kind": "needle", "text": text, "entity": entity, "depth": pos / len(hay),
                     "spans": spans, "qa": qa, "probe_qa": probe, "split": split})  # fmt: skip
    return docs


def write_jsonl(path: str | Path, docs: Iterable[Doc]) -> Path:
    """Write one JSON object per line (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Doc]:
    """Read what :func:`write_jsonl` wrote (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
