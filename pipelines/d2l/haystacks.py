"""Haystacks in many filler styles and needles in many wordings, for the chunk gate and needle recall.

:func:`pipelines.d2l.synth.make_needle_docs` hides one sentence form ("The magic number of <entity> is <4
digits>.") in one filler style (16 fixed pastoral sentences), the same two things meta-training saw. A user's long
document looks different (issue #14), so this module composes, offline and deterministically:

* filler in :data:`STYLES`: ``classic`` (synth's haystack sentences), ``narrative`` (story prose), ``technical``
  (manual and specification prose), ``lists`` (bullets, numbered steps, headings), ``dialogue`` (a chat
  transcript), ``pages`` (other documents: :func:`pipelines.d2l.pages.make_pages`, which state facts of their
  own) and ``correspondence`` (letters and e-mails). Every unit is composed from parts (thousands of distinct
  sentences per style), never drawn from a handful of fixed lines;
* needles in :data:`NEEDLES`, each a value type with several statement wordings and questions worded unlike the
  statement: ``number`` (4 digits), ``code`` ("KX-4471"), ``time`` ("18:45"), ``date`` ("14 March"), ``name``
  (a person), ``amount`` ("312 crowns"), ``combination`` ("31-07-58") and ``pin`` (4 digits, as ``number``, in
  wordings of its own); and four forms whose values come from
  a format grammar rather than one fixed shape (:func:`_formatted`: 2-4 groups of digits or capitals joined by one
  separator, "0412 993 207", "QX7731K", "3.14.2", "B/88/41"), ``serial``, ``reference``, ``phone`` and ``version``,
  because real documents carry identifiers of every shape and the adapter copied only the shapes it was trained on
  (``KX-4471`` right, ``QX7731K`` as ``X0771``). Values shaped like the held-out combination are never drawn;
  ``entry``: a thing of many (a locker, the guest network, a kiln...) in nine statement and eight question
  wordings with a value of any identifier shape, so that no wording predicts the answer's shape.

**Split.** :data:`HELDOUT_STYLES` (``correspondence``) and :data:`HELDOUT_NEEDLES` (``combination``: an unseen
wording *and* value shape; ``pin``: an unseen wording of a trained value shape) are for evaluation only:
:func:`make_filler_docs` and :func:`make_needle_fact_docs`, the functions meta-training and the gate fine-tune
call, refuse them, so no training code can draw them. Entities come from
:func:`pipelines.d2l.synth` names of the given ``split`` (``heldout``: names training never uses).

Not here: tokenising for training, scoring (``evals/bench_niah.py``), ``evals/docs*`` (never read).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.d2l import synth

__all__ = ["HELDOUT_NEEDLES", "HELDOUT_STYLES", "IDENTIFIER_FORMS", "NEEDLES", "STYLES", "TRAIN_NEEDLES",
           "TRAIN_STYLES", "check_train", "filler_units", "make_filler_docs", "make_haystack", "make_needle_fact_docs",
           "needle"]  # fmt: skip

Unit = str  # one filler unit: a sentence, a list line, a dialogue turn, a paragraph or a page

# ---------------------------------------------------------------- parts shared by the styles

_FIRST = ["Ada", "Bram", "Cleo", "Dov", "Elin", "Farid", "Gus", "Hana", "Ivo", "Juno", "Kasia", "Leif", "Maren",
          "Nico", "Orla", "Pavel", "Quinn", "Rosa", "Soren", "Tilde", "Umar", "Vera", "Wim", "Xena", "Yusuf", "Zora"]
_LAST = ["Abbot", "Brecken", "Corvell", "Dunmore", "Ellery", "Farrow", "Galloway", "Hartley", "Inglis", "Jessop",
         "Kinsey", "Lockhart", "Maddox", "Norquist", "Ormsby", "Pellow", "Radley", "Sefton", "Thorne", "Upshaw"]
_PLACES = ["the harbour", "the orchard", "the old mill", "the station", "the market hall", "the ferry landing",
           "the chapel", "the quarry road", "the upper meadow", "the boathouse", "the schoolyard", "the bakery",
           "the lighthouse", "the river bend", "the greenhouse", "the copper mine", "the town square", "the pier"]
_TIMES = ["at dawn", "after supper", "before the rain", "in late autumn", "on the first warm day", "at midnight",
          "during the fair", "as the bells rang", "long after dark", "that winter", "in the grey morning",
          "on market day", "when the tide turned", "before anyone woke"]
_MOVES = ["walked slowly to", "hurried toward", "wandered past", "climbed up to", "waited near", "rowed across to",
          "drove out to", "stopped outside", "returned to", "sketched", "swept the steps of", "searched"]
_FEELS = ["feeling oddly calm", "humming an old tune", "with a basket of pears", "without a word", "in a borrowed coat",
          "half asleep", "counting the gulls", "with muddy boots", "thinking of home", "clutching a letter"]
_SCENES = ["The wind smelled of salt and tar.", "Somewhere a dog barked twice and fell silent.",
           "Smoke curled from the chimneys along the lane.", "The lamps flickered as the storm came closer.",
           "Nobody mentioned the broken window again.", "The kettle had gone cold on the stove."]
_NOUNS = ["sky", "road", "field", "river", "house", "garden", "valley", "forest", "street", "window", "bridge"]
_ADJS = ["pale", "narrow", "crowded", "silent", "muddy", "golden", "empty", "misty", "windswept", "sunlit"]

_COMPONENTS = ["pressure valve", "drive belt", "sensor array", "control board", "intake filter", "cooling fan",
               "relay module", "hydraulic pump", "signal cable", "thermal fuse", "backup battery", "spindle motor",
               "flow meter", "mounting bracket", "firmware image", "log buffer", "power supply", "access panel"]
_ACTIONS = ["replace", "inspect", "calibrate", "reset", "clean", "tighten", "update", "disconnect", "test", "lubricate"]
_CHECKS = ["confirm the status light turns green", "record the reading in the service log",
           "wait for the self-test to finish", "check that no warning tone sounds", "verify the seal is dry",
           "restart the unit and watch the display", "compare the value with the previous week"]
_METRICS = ["draws more current", "runs several degrees warmer", "reports a slower response", "loses calibration",
            "vibrates noticeably", "needs a longer warm-up", "emits a faint clicking sound", "drops packets"]
_CONDS = ["the ambient temperature is high", "the unit has run for a full shift", "the supply voltage dips",
          "dust builds up on the vents", "the load changes quickly", "the humidity rises", "it is mounted sideways"]
_TECH = ["Operators should wear gloves when handling the {c}.", "The {c} is rated for continuous duty.",
         "Section {n} of this manual describes the {c} in more detail.",
         "Do not operate the unit with the {c} removed.",
         "A spare {c} ships with every installation kit.", "Torque settings for the {c} are listed in appendix {a}."]

_ITEMS = ["canvas tarps", "spare fuses", "rope coils", "paint tins", "garden hoses", "first-aid kits", "folding chairs",
          "extension leads", "storage crates", "work lamps", "rain jackets", "water barrels", "ladders", "toolboxes"]
_STATUS = ["in stock", "on order", "checked", "damaged, set aside", "returned", "needs labelling", "counted twice"]
_SECTIONS = ["Inventory", "Before you start", "Daily checklist", "Shopping list", "Open tasks", "Notes", "Supplies",
             "Agenda", "Packing list", "Follow-ups"]
_STEPS = ["Sort the {i} by size", "Label each box of {i}", "Move the {i} to the back shelf", "Count the {i} again",
          "Wipe down the {i}", "Write the number of {i} on the board", "Set aside any broken {i}"]

_OPENERS = ["Did you manage to", "I still need to", "Could you remind me to", "We forgot to", "Has anyone tried to",
            "I think we should", "Let's not", "Who wants to"]
_TASKS = ["book the hall", "water the plants", "call the plumber", "fix the gate", "order more paper", "walk the dog",
          "clear the gutters", "pick up the parcel", "bake something for Friday", "sort the recycling",
          "finish the quiz", "tidy the shed", "lock the bike shed"]
_REPLIES = ["Sure, leave it with me.", "Not yet, sorry.", "Maybe tomorrow?", "Ha, good luck with that.",
            "I did it this morning.", "Ask again after lunch.", "Only if it stops raining.", "Already on it.",
            "No idea, honestly.", "Give me ten minutes.", "That sounds fine to me.", "Let me check and come back."]
_CHAT = ["How was the trip?", "The coffee machine is broken again.", "Anyone seen my blue umbrella?",
         "Running late, start without me.", "Thanks for yesterday!", "The bus was packed this morning."]

_GREET = ["Dear {n},", "Hi {n},", "Hello {n},", "Good morning {n},"]
_LETTER = ["Thank you for your note about {t}.", "I hope the move went well and the new place feels like home.",
           "As promised, here is a short update on {t}.", "Please let me know if {t} still suits you.",
           "We talked it over and agreed to postpone {t} a little.", "I am sorry for the slow reply about {t}.",
           "The photos from {t} came out better than expected.", "Could we meet next week to go over {t}?"]
_TOPICS = ["the garden party", "the roof repairs", "the reading group", "the school concert", "the spring fair",
           "the new timetable", "the allotment", "the choir rehearsal", "the charity run", "the library sale"]
_SIGN = ["Best regards,", "Kind wishes,", "Yours,", "All the best,", "Warmly,", "Speak soon,"]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _narrative(rng: random.Random) -> Unit:
    if rng.random() < 0.2:
        return rng.choice(_SCENES)
    if rng.random() < 0.25:
        what = f"{rng.choice(_ADJS)} {rng.choice(_NOUNS)}"  # draw order as before: same haystacks
        return f"The {what} stretched beyond {rng.choice(_PLACES)} {rng.choice(_TIMES)}."
    who = rng.choice(_FIRST) if rng.random() < 0.6 else _person(rng)
    return f"{who} {rng.choice(_MOVES)} {rng.choice(_PLACES)} {rng.choice(_TIMES)}, {rng.choice(_FEELS)}."


def _technical(rng: random.Random) -> Unit:
    c = rng.choice(_COMPONENTS)
    roll = rng.random()
    if roll < 0.35:
        return f"To {rng.choice(_ACTIONS)} the {c}, power down the unit, then {rng.choice(_CHECKS)}."
    if roll < 0.7:
        return f"The {c} {rng.choice(_METRICS)} when {rng.choice(_CONDS)}."
    return rng.choice(_TECH).format(c=c, n=rng.randint(2, 19), a=rng.choice("ABCDEFG"))


def _lists(rng: random.Random) -> Unit:
    roll = rng.random()
    if roll < 0.12:
        return f"\n## {rng.choice(_SECTIONS)}\n"
    if roll < 0.55:
        return f"- {rng.choice(_ITEMS)}: {rng.randint(2, 60)}, {rng.choice(_STATUS)}"
    return f"{rng.randint(1, 12)}. {rng.choice(_STEPS).format(i=rng.choice(_ITEMS))}."


def _dialogue(rng: random.Random) -> Unit:
    who = rng.choice(_FIRST)
    roll = rng.random()
    if roll < 0.4:
        line = f"{rng.choice(_OPENERS)} {rng.choice(_TASKS)}?"
    elif roll < 0.8:
        line = rng.choice(_REPLIES)
    else:
        line = rng.choice(_CHAT)
    return f"{who}: {line}"


def _correspondence(rng: random.Random) -> Unit:
    body = " ".join(rng.choice(_LETTER).format(t=rng.choice(_TOPICS)) for _ in range(rng.randint(2, 4)))
    return (f"Subject: {rng.choice(_TOPICS).capitalize()}\n{rng.choice(_GREET).format(n=rng.choice(_FIRST))}\n"
            f"{body}\n{rng.choice(_SIGN)}\n{rng.choice(_FIRST)}\n")  # fmt: skip


def _classic(rng: random.Random) -> Unit:
    return rng.choice(synth._HAY)  # noqa: SLF001 - the benchmark's original haystack, for comparison


class _Pages:
    """Other documents' pages (pipelines/d2l/pages.py): whole pages, drawn in batches, with facts of their own."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.seed, self.split = rng.randrange(2**31), split
        self.buffer: list[str] = []

    def __call__(self, rng: random.Random) -> Unit:
        if not self.buffer:
            from pipelines.d2l import pages

            self.seed += 1
            self.buffer = [d["text"] for d in pages.make_pages(8, self.seed, self.split)]
        return self.buffer.pop() + "\n"


# style -> (unit maker factory, separator between units)
STYLES: dict[str, tuple[Callable[[random.Random, str], Callable[[random.Random], Unit]], str]] = {
    "classic": (lambda rng, split: _classic, " "),
    "narrative": (lambda rng, split: _narrative, " "),
    "technical": (lambda rng, split: _technical, " "),
    "lists": (lambda rng, split: _lists, "\n"),
    "dialogue": (lambda rng, split: _dialogue, "\n"),
    "pages": (lambda rng, split: _Pages(rng, split), "\n"),
    "correspondence": (lambda rng, split: _correspondence, "\n"),
}
HELDOUT_STYLES = ("correspondence",)
TRAIN_STYLES = tuple(s for s in STYLES if s not in HELDOUT_STYLES)

# ---------------------------------------------------------------- needles


def _code(rng: random.Random) -> str:
    return f"{synth._letters(rng, 2)}-{rng.randint(1000, 9999)}"  # noqa: SLF001


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]

_COMBINATION_SHAPE = re.compile(r"\d{2}-\d{2}-\d{2}")


def _formatted(rng: random.Random) -> str:
    """An identifier from a small grammar: 2-4 groups (1-4 digits or 1-3 capitals), one separator for all
    (none, "-", " ", ".", "/"); never the held-out combination's shape (two digits, three times, "-")."""
    while True:
        sep = rng.choice(["", "-", " ", ".", "/"])
        groups = []
        for _ in range(rng.randint(2, 4)):
            letters = rng.random() < 0.35 and not (sep == "" and groups and groups[-1].isalpha())
            if letters:
                groups.append(synth._letters(rng, rng.randint(1, 3)))  # noqa: SLF001
            else:
                groups.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4))))
        value = sep.join(groups)
        if sep == "" and all(g.isdigit() for g in groups):
            continue  # digits run together: a plain number, which ``number`` covers
        if not _COMBINATION_SHAPE.fullmatch(value):
            return value


# The ``entry`` form's things (a statement and its question name the same one, picked per needle) and value
# makers: its wording says nothing about the value's shape, so only the document can. Never the held-out forms'
# words (keypad, alarm, door, vault, safe, dial, combination, digits, type, disarm: see the test).
_ENTRY_THINGS = ["locker", "bike shed", "storeroom", "staff gate", "printer", "supply cabinet", "wifi router",
                 "loading bay", "server cupboard", "tool chest", "mailbox", "archive room", "garage", "photocopier",
                 "ticket machine", "boiler cupboard", "key box", "parcel locker", "fuel pump", "lift", "freezer",
                 "till", "meeting room", "cash box", "badge reader", "scanner", "lab fridge", "van", "music room",
                 "filing cabinet", "shutter", "generator", "guest network", "darkroom", "kiln", "staff portal"]
_ENTRY_VALUES: list[Callable[[random.Random], str]] = [
    synth.OPEN_VALUES["magic"], synth.VARIED_VALUES["magic"], _code, synth.VARIED_VALUES["code"], _formatted,
    _formatted]

# form -> (value maker, statement wordings, question wordings); {e} entity, {v} value, {o} (``entry`` only) a thing
NEEDLES: dict[str, tuple[Callable[[random.Random], str], list[str], list[str]]] = {
    "number": (lambda rng: str(rng.randint(1000, 9999)),
               ["The magic number of {e} is {v}.", "For the record, {e} picked {v} as its secret number.",
                "Remember that the secret number of {e} is {v}."],
               ["What is the magic number of {e}?", "Which secret number belongs to {e}?"]),
    "code": (_code,
             ["The access code for {e} is {v}.", "Staff at {e} unlock the store room with code {v}.",
              "Use code {v} to get into {e}."],
             ["Which code opens {e}?", "What code do you need to get into {e}?"]),
    "time": (lambda rng: f"{rng.randint(6, 22)}:{rng.choice(['05', '15', '25', '35', '45', '55'])}",
             ["The last shuttle to {e} leaves at {v}.", "{e} closes its gates at {v} sharp.",
              "Deliveries for {e} arrive at {v}."],
             ["At what time does the last shuttle to {e} depart?", "When does {e} shut?"]),
    "date": (lambda rng: f"{rng.randint(2, 28)} {rng.choice(_MONTHS)}",
             ["{e} holds its open day on {v}.", "The annual audit of {e} is on {v}.",
              "Mark {v} in the calendar: that is when {e} reopens."],
             ["On which date is the open day of {e}?", "What day should people note for {e}?"]),
    "name": (_person,
             ["The caretaker of {e} is {v}.", "Keys for {e} are kept by {v}.", "{v} looks after {e} on weekends."],
             ["Who takes care of {e}?", "Which person is in charge of {e}?"]),
    "amount": (lambda rng: f"{rng.randint(12, 980)} crowns",
               ["A yearly pass for {e} costs {v}.", "{e} charges {v} for the guided tour.",
                "The deposit at {e} is {v}."],
               ["How much does {e} ask for?", "What price does {e} charge?"]),
    "serial": (_formatted,
               ["The boiler at {e} carries serial number {v}.", "{v} is the serial stamped under the counter of {e}.",
                "Engineers log the pump at {e} as unit {v}."],
               ["What serial does the boiler of {e} have?", "Under which unit number is the pump of {e} logged?"]),
    "reference": (_formatted,
                  ["Quote reference {v} when writing to {e}.", "Parcels from {e} travel under reference {v}.",
                   "The file on {e} was opened as case {v}."],
                  ["Which reference should letters to {e} mention?", "What case number belongs to {e}?"]),
    "phone": (_formatted,
              ["The night desk of {e} answers on {v}.", "To reach {e} after hours, ring {v}.",
               "Call {v} if the gate of {e} is stuck."],
              ["What number reaches {e} at night?", "Which line do you ring for {e} after hours?"]),
    "version": (_formatted,
                ["The kiosks at {e} run firmware {v}.", "{e} upgraded its booking system to release {v}.",
                 "Release {v} is what the tills of {e} run."],
                ["Which firmware do the kiosks of {e} run?", "What release is the booking system of {e} on?"]),
    "combination": (lambda rng: f"{rng.randint(10, 39)}-{rng.randint(10, 59)}-{rng.randint(10, 99)}",
                    ["Whoever reaches the vault of {e} must dial {v} to open it.",
                     "Only the combination {v} opens the old safe at {e}."],
                    ["Which combination unlocks the safe of {e}?", "What numbers open the vault of {e}?"]),
    # many things x many wordings, any identifier shape: a wording that does not predict the value's shape
    "entry": (lambda rng: rng.choice(_ENTRY_VALUES)(rng),
              ["The {o} at {e} opens with {v}.", "At {e}, the {o} is set to {v}.", "Enter {v} to use the {o} of {e}.",
               "{e} changed the setting of its {o} to {v} last week.", "Note for staff: the {o} of {e} needs {v}.",
               "The {o} of {e} is registered under {v}.", "Whoever uses the {o} at {e} enters {v}.",
               "{v} is what the {o} of {e} expects.", "For the {o} at {e}, use {v}."],
              ["What opens the {o} at {e}?", "What should you enter at the {o} of {e}?",
               "What is the {o} of {e} set to?", "What does the {o} of {e} need?",
               "Which value goes with the {o} of {e}?", "What is the setting for the {o} at {e}?",
               "What do staff enter for the {o} of {e}?", "How do you get the {o} at {e} to work?"]),
    # held out like the combination, but its value is a trained shape (4 digits, as ``number``): it asks whether a
    # value the adapter can copy is found under a statement and questions worded as training never words them.
    "pin": (lambda rng: str(rng.randint(1000, 9999)),
            ["The keypad by the side door of {e} takes {v}.", "{e} set its alarm to switch off on {v}."],
            ["What do you type on the side-door keypad of {e}?", "Which digits disarm the alarm of {e}?"]),
}
HELDOUT_NEEDLES = ("combination", "pin")
# Training only (``make_needle_fact_docs(varied_values=True)``): values of many lengths for the forms whose value
# otherwise has one length, so the adapter cannot learn an answer's length from the question (see
# synth.VARIED_VALUES); never the combination's shape (these have one "-" at most).
VARIED_NEEDLE_VALUES: dict[str, Callable[[random.Random], str]] = {
    "number": synth.VARIED_VALUES["magic"],
    "code": synth.VARIED_VALUES["code"],
}
TRAIN_NEEDLES = tuple(n for n in NEEDLES if n not in HELDOUT_NEEDLES)
# Identifier forms: in training (``make_needle_fact_docs(shape_mix=p)``) a needle of one of these may carry another's
# value, so the adapter cannot learn a value's shape from the question's wording (the committed checkpoint answered
# the held-out pin's "What do you type on the side-door keypad of X?" in the code form's shape: "KV-92" for 9237).
IDENTIFIER_FORMS = ("number", "code", "serial", "reference", "phone", "version")


def check_train(styles: Sequence[str] = (), needles: Sequence[str] = ()) -> None:
    """ValueError unless every style and needle form exists and is a training one (held-out ones are refused)."""
    for kind, names, train, every in (("style", styles, TRAIN_STYLES, STYLES), ("needle form", needles,
                                                                               TRAIN_NEEDLES, NEEDLES)):
        for name in names:
            if name not in every:
                raise ValueError(f"unknown {kind} {name!r}; choose from {list(train)}")
            if name not in train:
                raise ValueError(f"{kind} {name!r} is held out for evaluation; training may use {list(train)}")


def needle(form: str, rng: random.Random, entity: str, varied_values: bool = False,
           shape_mix: float = 0.0) -> tuple[synth.Piece, str, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(the needle sentence as a piece, its value, a question, the same question in its other wording);
    ``varied_values``: the value from :data:`VARIED_NEEDLE_VALUES` where the form has one there; ``shape_mix``:
    the probability that an :data:`IDENTIFIER_FORMS` needle takes the value of another identifier form."""
    make, says, asks = NEEDLES[form]
    if shape_mix and form in IDENTIFIER_FORMS and rng.random() < shape_mix:
        form_of_value = rng.choice([f for f in IDENTIFIER_FORMS if f != form])
        make = NEEDLES[form_of_value][0]
        if varied_values:
            make = VARIED_NEEDLE_VALUES.get(form_of_value, make)
    elif varied_values:
        make = VARIED_NEEDLE_VALUES.get(form, make)
    value = make(rng)
    said = rng.choice(says)
    if "{o}" in said:  # entry: one thing for the statement and both questions
        thing = rng.choice(_ENTRY_THINGS)
        said, asks = said.replace("{o}", thing), [a.replace("{o}", thing) for a in asks]
    piece = synth.state(said, entity, form, value)
    if len(asks) > 2:  # two different wordings of many
        i, j = rng.sample(range(len(asks)), 2)
    else:
        i = rng.randrange(len(asks))
        j = i + 1
    qa, probe = ({"question": asks[k % len(asks)].format(e=entity), "answer": value, "attribute": form}
                 for k in (i, j))  # fmt: skip
    return piece, value, qa, probe


def filler_units(style: str, rng: random.Random, split: str = "train") -> Callable[[], Unit]:
    """A function returning the next filler unit of ``style`` (drawn from ``rng``)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    make, _ = STYLES[style]
    unit = make(rng, split)
    return lambda: unit(rng)


def _count(text: str, tokenizer: Any) -> int:
    return synth._count_tokens(text, tokenizer)  # noqa: SLF001


def make_haystack(style: str, form: str, target_tokens: int, seed: int, tokenizer: Any = None,
                  split: str = "heldout") -> synth.Doc:  # fmt: skip
    """One haystack of about ``target_tokens`` tokens of ``style`` filler with one ``form`` needle at a random depth.

    ``spans["needle"]`` is the character span of the needle sentence, ``spans[form]`` that of its value;
    ``depth`` the needle's relative position. Any style or form (evaluation); deterministic in the arguments.
    """
    if form not in NEEDLES:
        raise ValueError(f"unknown needle form {form!r}; choose from {list(NEEDLES)}")
    rng = random.Random(f"haystack:{style}:{form}:{target_tokens}:{seed}:{split}")
    entity = rng.choice(synth._entities(split))  # noqa: SLF001
    piece, value, qa, probe = needle(form, rng, entity)
    sep = STYLES[style][1] if style in STYLES else " "
    next_unit = filler_units(style, rng, split)
    units: list[str] = []
    total = _count(piece[0], tokenizer)
    while True:  # per-unit counts only estimate the joined text's: top up until the whole text is long enough
        while total < target_tokens:
            units.append(next_unit())
            total += _count(units[-1] + sep, tokenizer)
        text = sep.join([*units, piece[0]])
        total = _count(text, tokenizer)
        if total >= target_tokens:
            break
    pos = rng.randint(0, len(units))
    before = sep.join(units[:pos]) + (sep if pos else "")
    text = before + piece[0] + (sep if pos < len(units) else "") + sep.join(units[pos:])
    start = len(before)
    spans = {"needle": [start, start + len(piece[0])], form: [start + piece[2], start + piece[2] + len(value)]}
    return {"id": synth.doc_id(text), "kind": "haystack", "style": style, "form": form, "text": text,
            "entity": entity, "depth": pos / max(1, len(units)), "spans": spans, "qa": [qa], "probe_qa": [probe],
            "split": split}  # fmt: skip


def make_filler_docs(n: int, seed: int, styles: Sequence[str], n_units: tuple[int, int] = (2, 16)) -> list[synth.Doc]:
    """``n`` filler-only documents (no questions) in training ``styles``: distractor chunks for meta-training and
    the gate's negatives. Each is ``n_units`` units of one style (a ``pages`` unit is a whole page: one unit)."""
    check_train(styles)
    if not styles:
        raise ValueError("make_filler_docs needs at least one style")
    rng = random.Random(f"styled-hay:{seed}:{','.join(styles)}")
    docs: list[synth.Doc] = []
    for _ in range(n):
        style = rng.choice(list(styles))
        next_unit = filler_units(style, rng, "train")
        k = 1 if style == "pages" else rng.randint(*n_units)
        text = STYLES[style][1].join(next_unit() for _ in range(k)).strip()
        docs.append({"id": synth.doc_id(text), "kind": "hay", "style": style, "text": text, "qa": [], "probe_qa": []})
    return docs


def _needle_in_page(piece: synth.Piece, value: str, qa: dict[str, Any], probe: dict[str, Any], form: str,
                    entity: str, page_seed: int, rng: random.Random, split: str) -> synth.Doc:
    """One generated page with the needle sentence as a paragraph of its own between two of the page's paragraphs;
    the page's facts keep their spans (shifted), under ``page.<attribute>``."""
    from pipelines.d2l import pages

    page = pages.make_pages(1, page_seed, "train")[0]
    cuts = [m.end() for m in re.finditer(r"\n\n", page["text"])]
    at = rng.choice(cuts) if cuts else len(page["text"])
    inserted = piece[0] + "\n\n" if cuts else "\n\n" + piece[0]
    text = page["text"][:at] + inserted + page["text"][at:]
    start = at if cuts else at + 2
    spans = {form: [start + piece[2], start + piece[2] + len(value)]}
    for attribute, (a, b) in page["spans"].items():
        shift = len(inserted) if a >= at else 0
        spans[f"page.{attribute}"] = [a + shift, b + shift]
    facts = {form: value, **{f"page.{k}": v for k, v in page["facts"].items()}}
    return {"id": synth.doc_id(text), "kind": "needle", "style": "pages", "text": text, "entity": entity,
            "facts": facts, "spans": spans, "qa": [qa, *page["qa"][:2]], "probe_qa": [probe, *page["probe_qa"][:2]],
            "split": split}  # fmt: skip


def make_needle_fact_docs(n: int, seed: int, split: str = "train", *, styles: Sequence[str],
                          forms: Sequence[str] = TRAIN_NEEDLES,
                          n_units: tuple[int, int] = (0, 10), varied_values: bool = False,
                          shape_mix: float = 0.0) -> list[synth.Doc]:  # fmt: skip
    """``n`` needle-like fact documents: one needle of a training ``forms`` in ``n_units`` units of training
    ``styles`` filler; in the ``pages`` style, the needle is a paragraph of one generated page whose own facts are
    stated values too (their spans supervise the pointer like the needle's) and asked as well (up to 2 of its
    questions after the needle's): a needle among other facts, as in a fact-dense chunk.
    ``varied_values``: values of many lengths (:data:`VARIED_NEEDLE_VALUES`); ``shape_mix``: see :func:`needle`.

    Same schema as :func:`pipelines.d2l.synth.make_fact_docs` (``facts``, ``spans``, ``qa``, ``probe_qa``), so
    meta-training caches them like any fact document and the gate learns them as chunks to keep.
    """
    check_train(styles, forms)
    usable = list(styles)
    if not usable or not forms:
        raise ValueError("make_needle_fact_docs needs at least one style and one needle form")
    rng = random.Random(f"styled-needles:{seed}:{split}:{','.join(usable)}:{','.join(forms)}")
    names = synth._entities(split)  # noqa: SLF001
    docs: list[synth.Doc] = []
    for _ in range(n):
        style, form, entity = rng.choice(usable), rng.choice(list(forms)), rng.choice(names)
        piece, value, qa, probe = needle(form, rng, entity, varied_values, shape_mix)
        if style == "pages":
            docs.append(_needle_in_page(piece, value, qa, probe, form, entity, rng.randrange(2**31), rng, split))
            continue
        next_unit = filler_units(style, rng, "train")
        units: list[synth.Piece] = [(next_unit().strip(), None, 0) for _ in range(rng.randint(*n_units))]
        units.insert(rng.randint(0, len(units)), piece)
        sep = STYLES[style][1]
        text, spans = "", {}
        for i, (sentence, attribute, offset) in enumerate(units):
            if attribute is not None:
                spans[attribute] = [len(text) + offset, len(text) + offset + len(value)]
            text += sentence + (sep if i < len(units) - 1 else "")
        docs.append({"id": synth.doc_id(text), "kind": "needle", "style": style, "text": text, "entity": entity,
                     "facts": {form: value}, "spans": spans, "qa": [qa], "probe_qa": [probe],
                     "split": split})  # fmt: skip
    return docs
