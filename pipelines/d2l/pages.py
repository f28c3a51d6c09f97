"""Realistic fictional pages for Doc-to-LoRA meta-training: many domains, layouts and answer types.

:mod:`pipelines.d2l.prose` writes short paragraphs with one fact per sentence and questions that reuse the
statement's words. The pages agents meet (``evals/docs``, ``evals/docs_heldout``) look different: 150-600 tokens,
markdown lists and tables, headings, FAQ blocks, numbered steps, memo headers, footnotes and exceptions, several
facts in one sentence, and questions that ask "how long / by when / who" in other words than the page uses. This
module composes such pages:

* one fictional organisation per page (names composed from syllables, or drawn from small lists), in one of
  :data:`DOMAINS` (library, gym, clinic, rail line, car hire, software release, maintenance notice, course,
  flat to let, restaurant, race, warehouse safety, product sheet, theatre, courier, photo contest);
* 5-9 facts of the domain, each with a typed value drawn fresh per page (:data:`KINDS`: names, places, counts,
  measures with units, amounts of money, dates, times, durations, percentages, codes, phone numbers, and
  yes/no-with-a-condition facts whose answer is the condition);
* a layout (:data:`LAYOUTS`): prose paragraphs (two facts per sentence now and then), markdown bullets, a
  key/value table, an FAQ, headed sections, numbered steps, a memo, or terms with footnotes;
* each fact's question written from a paraphrase table (several wordings per fact, none repeating the
  statement's key words; the FAQ layout uses one wording as its heading and asks with another), ``qa`` and
  ``probe_qa`` in different wordings;
* boilerplate and generic filler sentences until the page reaches its drawn length (``tokens``, counted
  with the tokenizer when one is given, else estimated).

Same schema as :func:`pipelines.d2l.synth.make_fact_docs` (``text``, ``facts``, ``spans``, ``qa``, ``probe_qa``,
``split``; ``kind="page"``, plus ``domain``, ``layout``, ``names``): ``spans[key]`` is the character span of the
answer of ``key`` in ``text`` (for the pointer loss), and every answer is a substring of the page. Deterministic
in (n, seed, split, options). ``split="heldout"`` draws organisation names training never uses.

**Disjoint from the evaluation pages.** No proper name of ``evals/docs`` or ``evals/docs_heldout`` may appear in
a generated page: :func:`reserved_names` collects their capitalised words, and composed names that hit one are
drawn again, as are codes, versions, phone numbers, e-mail and street addresses found in their text
(:func:`reserved_text`); ``tests/generators/test_d2l_pages.py`` checks whole pages against both folders.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.d2l.synth import Doc, doc_id

__all__ = ["DOMAINS", "GENERIC_FACTS", "KINDS", "LAYOUTS", "estimate_tokens", "make_pages", "reserved_names",
           "reserved_text"]

ROOT = Path(__file__).resolve().parents[2]
EVAL_PAGE_DIRS = (ROOT / "evals" / "docs", ROOT / "evals" / "docs_heldout")


@lru_cache(maxsize=1)
def reserved_text() -> str:
    """The evaluation pages' text, lower-cased (codes, versions, phone numbers and addresses must not recur)."""
    return "\n".join(path.read_text(encoding="utf-8").lower() for folder in EVAL_PAGE_DIRS
                     for path in sorted(folder.glob("*.md")) if path.name.lower() != "readme.md")  # fmt: skip


@lru_cache(maxsize=1)
def reserved_names() -> frozenset[str]:
    """Every capitalised word of the evaluation pages (``evals/docs``, ``evals/docs_heldout``), lower-cased.

    Composed names (people, places, organisations) are never one of these; the fixed template text is checked
    against the pages' proper names by the tests.
    """
    words: set[str] = set()
    for folder in EVAL_PAGE_DIRS:
        for path in folder.glob("*.md"):
            if path.name.lower() != "readme.md":
                words |= {w.lower() for w in re.findall(r"\b[A-Z][^\W\d_]+\b", path.read_text(encoding="utf-8"))}
    return frozenset(words)


# ---------------------------------------------------------------- names

_FIRST = ["Agnes", "Bastian", "Carys", "Desmond", "Elodie", "Florian", "Greer", "Hamish", "Idris", "Juno", "Lorcan",
          "Mirela", "Nadim", "Orla", "Petra", "Quentin", "Renata", "Sabine", "Teodor", "Ulrike", "Vivian", "Wendel",
          "Xenia", "Yusuf", "Zofia", "Anouk", "Bram", "Cosima", "Dorian", "Esther", "Folke", "Gunnar", "Halima",
          "Ivo", "Jorunn", "Kofi", "Linnea", "Matteo", "Nell", "Oskar"]  # fmt: skip
_SUR_A = ["Ash", "Brack", "Cor", "Dun", "Elm", "Gar", "Hal", "Ing", "Jes", "Kil", "Lan", "Mar", "Nor", "Pen", "Quen",
          "Ros", "Stan", "Thorn", "Whit", "Yar", "Bel", "Cres", "Dal", "Gold", "Hart", "Kest", "Loft", "Red", "Sum",
          "Tam"]  # fmt: skip
_SUR_B = ["by", "croft", "den", "field", "ham", "ley", "more", "ridge", "sey", "ton", "well", "wood", "worth",
          "shaw", "ford", "gate", "hurst", "ington", "wick", "er"]  # fmt: skip
_PLACE_A = ["Alder", "Bram", "Carn", "Dray", "Eske", "Fal", "Glen", "Hol", "Kin", "Lath", "Nant", "Ock", "Pol",
            "Rhos", "Sand", "Tre", "Wold", "Yew", "Ard", "Bryn", "Caer", "Dun", "Ember", "Fosse"]  # fmt: skip
_PLACE_B = ["wick", "haven", "stow", "mouth", "bury", "field", "thwaite", "combe", "ness", "by", "dale", "minster",
            "port", "well", "ton", "stead", "hithe", "leigh"]  # fmt: skip
_LETTERS = "ABCDEFGHJKLMNPRSTVWXZ"
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]  # fmt: skip
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _compose(rng: random.Random, a: Sequence[str], b: Sequence[str]) -> str:
    reserved = reserved_names()
    while True:
        name = rng.choice(a) + rng.choice(b)
        if name.lower() not in reserved:
            return name


def _surname(rng: random.Random) -> str:
    return _compose(rng, _SUR_A, _SUR_B)


def _place(rng: random.Random) -> str:
    return _compose(rng, _PLACE_A, _PLACE_B)


def _person(rng: random.Random) -> str:
    first = rng.choice([f for f in _FIRST if f.lower() not in reserved_names()])
    return f"{first} {_surname(rng)}"


# ---------------------------------------------------------------- values

Value = tuple[str, str]  # (what the page shows, the answer: a substring of it)
Maker = Callable[[random.Random, dict[str, Any]], Value]


def _same(text: str) -> Value:
    return text, text


def person(rng: random.Random, ctx: dict[str, Any]) -> Value:
    name = _person(rng)
    title = rng.choice(["", "", "", "Dr "])
    return f"{title}{name}", name


def place(rng: random.Random, ctx: dict[str, Any]) -> Value:
    return _same(_place(rng))


def count(lo: int, hi: int, step: int = 1) -> Maker:
    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        n = rng.randrange(lo, hi + 1, step)
        return _same(f"{n:,}" if n >= 10_000 else str(n))

    return make


def decimal(lo: float, hi: float, places: int = 1) -> Maker:
    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        return _same(f"{rng.uniform(lo, hi):.{places}f}")

    return make


def money(lo: int, hi: int, cents: float = 0.5) -> Maker:
    """An amount in the page's currency; the answer is the number without the symbol (``12.50`` of ``£12.50``)."""

    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        n = rng.randint(lo, hi)
        # below 10 always with cents: a bare "2" would be contained in most other numbers of the page
        amount = f"{n:,}" if n >= 10 and rng.random() >= cents else f"{n}.{rng.choice(['50', '95', '25', '75', '40', '99', '20'])}"
        symbol, word = ctx["currency"]
        return (f"{symbol}{amount}", amount) if symbol else (f"{amount} {word}", amount)

    return make


def percent(lo: int, hi: int) -> Maker:
    return lambda rng, ctx: _same(f"{rng.randint(lo, hi)}%")


def clock(lo: int, hi: int) -> Maker:
    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        return _same(f"{rng.randint(lo, hi):02d}:{rng.choice(['00', '15', '30', '45', '10', '20', '40', '50'])}")

    return make


def date(rng: random.Random, ctx: dict[str, Any]) -> Value:
    day, month = rng.randint(1, 28), rng.choice(_MONTHS)
    return _same(f"{day} {month}" if ctx["date_order"] == "dm" else f"{month} {day}")


def weekday(rng: random.Random, ctx: dict[str, Any]) -> Value:
    return _same(rng.choice(_WEEKDAYS))


def duration(unit: str, lo: int, hi: int) -> Maker:
    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        n = rng.randint(lo, hi)
        return _same(f"{n} {unit}{'' if n == 1 else 's'}")

    return make


def code(pattern: str) -> Maker:
    """``A`` a letter, ``9`` a digit, anything else itself: ``AA-999`` -> ``KT-418``."""

    def make(rng: random.Random, ctx: dict[str, Any]) -> Value:
        return _same("".join(rng.choice(_LETTERS) if c == "A" else str(rng.randint(0, 9)) if c == "9" else c
                             for c in pattern))  # fmt: skip

    return make


def codes(*patterns: str) -> Maker:
    makers = [code(p) for p in patterns]
    return lambda rng, ctx: rng.choice(makers)(rng, ctx)


def phone(rng: random.Random, ctx: dict[str, Any]) -> Value:
    return _same(f"0{rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}")


def version(rng: random.Random, ctx: dict[str, Any]) -> Value:
    return _same(f"{rng.randint(1, 14)}.{rng.randint(0, 30)}.{rng.randint(1, 9)}")


def address(rng: random.Random, ctx: dict[str, Any]) -> Value:
    return _same(f"{rng.randint(2, 240)} {_surname(rng)} {rng.choice(['Road', 'Street', 'Lane', 'Way', 'Square'])}")


def email(rng: random.Random, ctx: dict[str, Any]) -> Value:
    box = rng.choice(["info", "hello", "office", "desk", "contact", "team"])
    return _same(f"{box}@{_place(rng).lower()}.example")


def condition(*options: tuple[str, str]) -> Maker:
    """A yes/no fact with a condition: the page states the condition, the answer is its key words."""
    return lambda rng, ctx: rng.choice(options)


KINDS = ("person", "place", "count", "decimal", "money", "percent", "time", "date", "weekday", "duration", "code",
         "phone", "version", "address", "email", "condition")  # fmt: skip


# ---------------------------------------------------------------- domains


@dataclass(frozen=True)
class Fact:
    """One fact a domain's page may state: ``{e}`` is the organisation, ``{v}`` the value as the page shows it.

    ``says``: sentences stating it (each with ``{v}`` once); ``asks``: at least three questions in other words
    than every ``says`` (the answer is never in a question); ``label``: its name in lists, tables and headings.
    """

    key: str
    kind: str
    make: Maker
    label: str
    says: tuple[str, ...]
    asks: tuple[str, ...]


def F(key: str, kind: str, make: Maker, label: str, says: Sequence[str], asks: Sequence[str]) -> Fact:  # noqa: N802
    return Fact(key, kind, make, label, tuple(says), tuple(asks))


@dataclass(frozen=True)
class Domain:
    kinds: tuple[str, ...]  # organisation name endings ("Public Library")
    titles: tuple[str, ...]  # page titles, with {e}
    boiler: tuple[str, ...]  # sentences of the domain that state nothing asked
    facts: tuple[Fact, ...]


def D(kinds: Sequence[str], titles: Sequence[str], boiler: Sequence[str], facts: Sequence[Fact]) -> Domain:  # noqa: N802
    return Domain(tuple(kinds), tuple(titles), tuple(boiler), tuple(facts))


DOMAINS: dict[str, Domain] = {
    "library": D(
        ["Library", "Reading Rooms", "Lending Library"],
        ["{e}: borrowing and membership", "Using {e}", "{e}: information for readers"],
        ["Membership is free for everyone who lives or works in the district.", "Please keep your card with you.",
         "Food is not allowed between the shelves.", "Mobile phones should be switched to silent.",
         "Our volunteers run a reading group once a month."],
        [F("loan", "duration", duration("day", 10, 35), "Loan period",
           ["Books may be borrowed for {v}.", "The standard loan period is {v}."],
           ["How long can I keep a book I took out?", "For how long is a borrowed book mine before it is due back?",
            "What is the lending time at {e}?"]),
         F("fine", "money", money(1, 3, cents=0.9), "Overdue charge",
           ["Late returns cost {v} per item for every day.", "Overdue items are charged at {v} a day."],
           ["What is the daily penalty for bringing something back after its due date?",
            "How much do you pay each day a book is kept too long?", "What does {e} ask for every late day?"]),
         F("max_items", "count", count(10, 40), "Items at once",
           ["Members may have up to {v} items on loan at once.", "No more than {v} items can be out on one card."],
           ["What is the most a reader can take home together?", "How many things can one person borrow simultaneously?",
            "What is the borrowing cap per member?"]),
         F("head", "person", person, "Head librarian",
           ["The head librarian is {v}.", "{v} leads the library team."],
           ["Who is in charge of {e}?", "Who runs the staff there?", "Who should a complaint about the service go to?"]),
         F("late", "time", clock(19, 21), "Thursday late opening",
           ["On Thursdays the doors stay open until {v}.", "Late opening is on Thursday, until {v}."],
           ["How late can I visit on a Thursday?", "When does {e} close on Thursday evenings?",
            "What is the closing hour at the end of the week's long day?"]),
         F("wifi", "code", codes("AAAA-99", "AA99AA", "AAA-999"), "Wi-Fi password",
           ["The guest network password is {v}.", "To get online, use the code {v}."],
           ["What do I type to connect my laptop to the internet there?", "Which key unlocks the wireless connection?",
            "What is the wireless login?"]),
         F("renew", "condition", condition(("another reader has reserved the item", "reserved"),
                                           ("the item is a short-loan textbook", "short-loan"),
                                           ("the loan has been extended twice already", "twice")),
           "Renewals", ["Loans can be extended online, except when {v}.", "You may renew from home unless {v}."],
           ["Can I always prolong my loan through the website?", "Is there any case in which a loan cannot be extended?",
            "When is renewing from home refused?"]),
         F("seats", "count", count(12, 90), "Study room seats",
           ["The silent study room has {v} seats.", "Up to {v} people can work in the quiet room."],
           ["How many people fit in the place for silent work?", "What is the capacity of the quiet room?",
            "How many desks are there for silent study?"])],
    ),
    "gym": D(
        ["Fitness Club", "Leisure Centre", "Athletic Club"],
        ["{e} membership guide", "Welcome to {e}", "{e}: rules and prices"],
        ["Please wipe down equipment after use.", "Towels are available at reception.", "Staff are trained in first aid.",
         "Outdoor shoes are not allowed on the gym floor.", "Classes are listed on the board by the entrance."],
        [F("monthly", "money", money(19, 79), "Monthly fee",
           ["Membership costs {v} per month.", "The monthly subscription is {v}."],
           ["How much do I pay every month to train there?", "What is the regular charge for belonging to {e}?",
            "What does a month at {e} cost?"]),
         F("joining", "money", money(10, 60, cents=0.2), "Joining fee",
           ["New members pay a one-off joining fee of {v}.", "A sign-up fee of {v} is charged once."],
           ["What is the cost of enrolling for the first time?", "How much is the start-up charge?",
            "What do newcomers pay only at the beginning?"]),
         F("opens", "time", clock(5, 7), "Weekday opening",
           ["On weekdays the doors open at {v}.", "We open at {v} from Monday to Friday."],
           ["How early can I start a workout on a Tuesday?", "At what hour does {e} let people in on working days?",
            "When is the earliest weekday session possible?"]),
         F("closes", "time", clock(21, 23), "Closing time",
           ["The building closes at {v}.", "Everyone must leave by {v}."],
           ["Until when can members stay in the evening?", "At what time is {e} locked up at night?",
            "How late is the club open?"]),
         F("pool", "decimal", decimal(26, 31), "Pool temperature (°C)",
           ["The pool is kept at {v} °C.", "Water in the pool is heated to {v} degrees."],
           ["How warm is the swimming water?", "What temperature does the pool have?", "How heated is the pool, in degrees?"]),
         F("min_age", "count", count(14, 18), "Minimum age",
           ["Members must be at least {v} years old.", "The gym floor is open to anyone aged {v} or over."],
           ["How old do you have to be to join?", "What is the youngest age allowed to train?",
            "From what age can someone use the weights?"]),
         F("freeze", "condition", condition(("you have a doctor's note", "doctor"),
                                            ("you give two weeks' notice", "two weeks"),
                                            ("you have been a member for six months", "six months")),
           "Pausing", ["A membership can be frozen only if {v}.", "Pausing your plan is possible if {v}."],
           ["Can I put my subscription on hold?", "Is it possible to suspend payments for a while?",
            "Under what circumstances may a member take a break from paying?"]),
         F("manager", "person", person, "Club manager",
           ["The club manager is {v}.", "{v} manages the centre."],
           ["Who is the boss at {e}?", "Who is responsible for running the club?", "Who oversees the staff there?"])],
    ),
    "clinic": D(
        ["Dental Practice", "Health Centre", "Medical Clinic"],
        ["{e}: patient information", "Appointments at {e}", "Visiting {e}"],
        ["Please arrive a few minutes before your appointment.", "Tell us if your contact details change.",
         "We treat every patient with respect and ask the same of you.", "Interpreters can be arranged on request.",
         "Our waiting room has toys for young children."],
        [F("cancel", "duration", duration("hour", 12, 72), "Cancellation notice",
           ["Appointments must be cancelled at least {v} in advance.", "Please give us {v} notice if you cannot come."],
           ["How much warning is needed to call off a visit?", "How far ahead must I tell them I will not attend?",
            "What is the deadline for dropping an appointment?"]),
         F("missed", "money", money(15, 60), "Missed appointment fee",
           ["A missed appointment is charged at {v}.", "If you do not turn up, we charge {v}."],
           ["What happens to my wallet if I forget to come?", "How much is billed for not showing up?",
            "What is the penalty for a no-show?"]),
         F("checkup", "duration", duration("month", 6, 18), "Check-up interval",
           ["We recommend a check-up every {v}.", "Routine examinations take place every {v}."],
           ["How often should I come for a routine look?", "What is the usual gap between regular examinations?",
            "How frequently are check-ups advised?"]),
         F("urgent", "phone", phone, "Urgent line",
           ["For urgent problems call {v}.", "Out of hours, ring {v}."],
           ["Which number do I dial in an emergency at night?", "How do I reach someone urgently after closing?",
            "What is the after-hours telephone?"]),
         F("lead", "person", person, "Lead clinician",
           ["The lead clinician is {v}.", "{v} heads the clinical team."],
           ["Who is the senior doctor at {e}?", "Who leads the medical staff?", "Who is in charge of treatment there?"]),
         F("opens", "time", clock(7, 9), "Opening time",
           ["Reception opens at {v}.", "The front desk is staffed from {v}."],
           ["From when can I phone reception in the morning?", "When does the desk start taking calls?",
            "What time do they start the day?"]),
         F("late_day", "weekday", weekday, "Late evening",
           ["Evening appointments are offered on {v}.", "We stay open late on {v}."],
           ["On which day can I book after work?", "Which day has evening slots?", "When are after-work visits possible?"]),
         F("bring", "condition", condition(("a photo ID", "photo ID"), ("your vaccination card", "vaccination card"),
                                           ("a list of your current medicines", "current medicines")),
           "What to bring", ["New patients must bring {v} to their first visit.", "On your first visit, please bring {v}."],
           ["What should I carry with me the first time?", "Is anything required when registering in person?",
            "What do newcomers need to show?"])],
    ),
    "rail": D(
        ["Railway", "Coach Lines", "Tramway", "Light Rail"],
        ["{e}: timetable and fares", "Travelling with {e}", "{e} passenger information"],
        ["Services run every day except on public holidays.", "Please keep your ticket until the end of your journey.",
         "Quiet carriages are marked with a blue sign.", "Timetables may change during engineering works.",
         "Step-free access is available at most stops."],
        [F("first", "time", clock(5, 7), "First departure",
           ["The first service leaves at {v}.", "Trains start running with the {v} departure."],
           ["How early can I catch a ride in the morning?", "When does the earliest trip set off?",
            "At what time does {e} begin its day?"]),
         F("last", "time", clock(22, 23), "Last departure",
           ["The last service leaves at {v}.", "The final departure of the day is at {v}."],
           ["What is the latest I can travel at night?", "When does the final trip set off?",
            "Until what time is there a service in the evening?"]),
         F("trip", "duration", duration("minute", 18, 95), "Journey time",
           ["The full journey takes {v}.", "End to end, the ride lasts {v}."],
           ["How long am I on board from one end to the other?", "What is the travel time for the whole line?",
            "How much time does the complete route need?"]),
         F("fare", "money", money(2, 19), "Single fare",
           ["A single ticket costs {v}.", "One-way fares are {v}."],
           ["What do I pay to go one way?", "How much is a ticket for a single trip?", "What is the price of a one-way ride?"]),
         F("terminus", "place", place, "Terminus",
           ["The line ends at {v}.", "Every service terminates at {v}."],
           ["Where is the final stop?", "Which town is the end of the route?", "Where do all trips finish?"]),
         F("line", "code", codes("A99", "A-9", "AA 99"), "Line number",
           ["The route is signed as line {v}.", "Look for line {v} on the departure boards."],
           ["What is the route called on the signs?", "Which line code should I look for?", "What number is shown on the boards?"]),
         F("bikes", "condition", condition(("outside the morning and evening rush hours", "rush hour"),
                                           ("if they are folded", "folded"), ("with a bike ticket", "bike ticket")),
           "Bicycles", ["Bicycles are allowed on board {v}.", "You can take a bike {v}."],
           ["Can I bring my cycle with me?", "Is there any restriction on taking bikes?", "When may cyclists board with their bikes?"]),
         F("stops", "count", count(11, 38), "Stops",
           ["The route has {v} stops.", "Trains call at {v} stations on the way."],
           ["How many places does the service halt at?", "How many stations are on the route?", "What is the number of stops along the line?"])],
    ),
    "car_hire": D(
        ["Car Hire", "Motors", "Van Rental"],
        ["{e}: rental conditions", "Hiring a car from {e}", "{e}: before you drive away"],
        ["All vehicles are cleaned between rentals.", "Child seats can be added when booking.",
         "Smoking is not permitted in any vehicle.", "Please check the car with our staff before you leave.",
         "Toll charges are passed on to the driver."],
        [F("min_age", "count", count(21, 25), "Minimum driver age",
           ["Drivers must be at least {v} years old.", "We rent only to drivers aged {v} or over."],
           ["How old must I be to take a car?", "What is the youngest age allowed behind the wheel?",
            "From what age can someone hire?"]),
         F("deposit", "money", money(150, 900, cents=0.1), "Deposit",
           ["A deposit of {v} is held on your card.", "We block {v} on a credit card as security."],
           ["How much is reserved on my card while I have the vehicle?", "What security amount is taken?",
            "What sum is frozen as a guarantee?"]),
         F("miles", "count", count(150, 400, 50), "Daily mileage (km)",
           ["Each rental day includes {v} km.", "The daily allowance is {v} km."],
           ["How far can I drive per day without paying more?", "What distance is free each day?",
            "How many kilometres come with a day of hire?"]),
         F("late_fee", "money", money(15, 45), "Late return",
           ["Returning a car late costs {v} per hour.", "Each hour after the agreed time is charged at {v}."],
           ["What do I pay if I bring the vehicle back after the agreed time?", "What is the hourly penalty for a delay?",
            "How much extra for each overdue hour?"]),
         F("branch", "place", place, "Main branch",
           ["Our main branch is in {v}.", "Cars are collected from the depot in {v}."],
           ["Where do I pick up the vehicle?", "In which town is the main office?", "Where is the collection point?"]),
         F("closes", "time", clock(17, 20), "Desk closes",
           ["The rental desk closes at {v}.", "Keys can be handed back until {v}."],
           ["Until when is someone at the counter?", "What is the latest time to return the keys?",
            "When does the office shut?"]),
         F("fuel", "condition", condition(("with a full tank", "full tank"), ("with the same fuel level", "same fuel level"),
                                          ("after a refill at the partner station", "partner station")),
           "Fuel", ["Cars must be returned {v}.", "Please bring the car back {v}."],
           ["Do I have to refuel before returning?", "What is the rule on petrol at the end?",
            "Is there a requirement about the tank when I drop it off?"]),
         F("excess", "money", money(400, 1500, cents=0.0), "Insurance excess",
           ["The insurance excess is {v}.", "You pay the first {v} of any damage."],
           ["How much of a damage bill falls on me?", "What is my share of the cost after an accident?",
            "What is the deductible for damage?"])],
    ),
    "software": D(
        ["Software", "Systems", "Labs"],
        ["{e} release notes", "What's new from {e}", "{e}: upgrade guide"],
        ["This release fixes several small bugs.", "The documentation has been updated.",
         "Thanks to everyone who reported problems.", "Back up your data before upgrading.",
         "The upgrade does not change the file format."],
        [F("version", "version", version, "Version",
           ["The current release is version {v}.", "Version {v} is now available."],
           ["What is the newest build called?", "Which release number should I install?", "What is the latest version?"]),
         F("released", "date", date, "Release date",
           ["It was released on {v}.", "The release came out on {v}."],
           ["When did the update ship?", "On what day was it published?", "What is the publication date of this build?"]),
         F("eol", "date", date, "End of support",
           ["The previous version is supported until {v}.", "Support for the old release ends on {v}."],
           ["How long will the older build get fixes?", "When does help for the earlier release stop?",
            "By when must users of the old version move on?"]),
         F("ram", "count", count(12, 64, 4), "Memory (GB)",
           ["It needs at least {v} GB of memory.", "A minimum of {v} GB of RAM is required."],
           ["How much RAM does the machine need?", "What is the smallest amount of memory supported?",
            "How many gigabytes of memory are needed?"]),
         F("port", "count", count(2000, 9900), "Default port",
           ["The server listens on port {v} by default.", "By default it accepts connections on port {v}."],
           ["Which network port does it use unless configured?", "What port should the firewall open?",
            "On what port does the service answer out of the box?"]),
         F("lead", "person", person, "Release manager",
           ["The release manager is {v}.", "{v} coordinated this release."],
           ["Who was in charge of this update?", "Who looks after releases?", "Who put the release together?"]),
         F("price", "money", money(29, 499, cents=0.3), "Licence",
           ["A single licence costs {v}.", "One seat is priced at {v}."],
           ["How much is it for one user?", "What does a seat cost?", "What is the price per licence?"]),
         F("upgrade", "condition", condition(("from version 3 or later", "version 3"),
                                             ("after stopping the background service", "background service"),
                                             ("with an active support plan", "support plan")),
           "Upgrading", ["You can upgrade directly only {v}.", "In-place upgrades work only {v}."],
           ["Can anyone move straight to the new build?", "Is there a requirement before upgrading?",
            "What is needed for a direct update?"])],
    ),
    "maintenance": D(
        ["IT Services", "Network Operations", "Platform Team"],
        ["Planned maintenance: {e}", "Service notice from {e}", "{e}: scheduled downtime"],
        ["We apologise for any inconvenience.", "No action is needed from most users.",
         "Status updates will be posted on the internal portal.", "Saved work will not be affected.",
         "Please log out before the window starts."],
        [F("day", "date", date, "Date", ["The work will take place on {v}.", "Maintenance is scheduled for {v}."],
           ["On which day will systems be unavailable?", "When is the outage planned?", "What date is the downtime?"]),
         F("start", "time", clock(0, 6), "Start", ["The window opens at {v}.", "Work begins at {v}."],
           ["At what hour does the outage begin?", "When do services go offline?", "What time does the work kick off?"]),
         F("length", "duration", duration("hour", 2, 9), "Expected duration",
           ["It should last about {v}.", "We expect the work to take {v}."],
           ["How long will things be down?", "For how much time will access be interrupted?", "What is the expected length of the outage?"]),
         F("system", "code", codes("AAA-99", "AAAA9", "AA-999"), "Affected system",
           ["The affected system is {v}.", "Only {v} will be offline."],
           ["Which service will stop working?", "What is the name of the system that goes down?", "Which platform is being serviced?"]),
         F("contact", "person", person, "Contact", ["Questions should go to {v}.", "The engineer on duty is {v}."],
           ["Whom do I ask if something breaks afterwards?", "Who can answer queries about the work?", "Who is the person to contact?"]),
         F("ticket", "code", codes("CHG-99999", "CR99999", "MNT-9999"), "Change ticket",
           ["The change is tracked as {v}.", "Please quote ticket {v}."],
           ["Which reference should I mention when I write?", "What is the tracking number of the change?",
            "Under what ticket is the work filed?"]),
         F("backup", "condition", condition(("if you use the VPN", "VPN"), ("for the finance team", "finance"),
                                            ("from the office network only", "office network")),
           "Fallback", ["A read-only copy stays available {v}.", "Read-only access remains {v}."],
           ["Will I have any access at all during the outage?", "Is there a fallback while the work is done?",
            "Can anyone still read data during the window?"])],
    ),
    "course": D(
        ["College", "Academy", "Institute"],
        ["Course outline: {e}", "{e}: module handbook", "Studying at {e}"],
        ["Attendance is recorded at every session.", "Reading lists are on the course website.",
         "Office hours are by appointment.", "Group work counts towards the final grade.",
         "Please use the discussion forum for questions about content."],
        [F("code", "code", codes("AAA999", "AA-999", "AAAA 99"), "Module code",
           ["The module code is {v}.", "Register under code {v}."],
           ["How is the module identified in the register?", "Which code do students enrol with?", "What is the course reference?"]),
         F("lecturer", "person", person, "Lecturer", ["The module is taught by {v}.", "Your lecturer is {v}."],
           ["Who gives the classes?", "Who teaches this course?", "Whom do students learn from?"]),
         F("hours", "count", count(10, 24), "Weekly study hours",
           ["Plan for {v} hours of study each week.", "Students should set aside {v} hours a week for the module."],
           ["How much time per week should learners budget?", "What weekly workload is expected?",
            "How many hours of work does the module need weekly?"]),
         F("exam", "date", date, "Exam date", ["The written exam is on {v}.", "The final exam takes place on {v}."],
           ["When is the test at the end?", "On what date do students sit the paper?", "What is the date of the assessment?"]),
         F("pass", "percent", percent(40, 65), "Pass mark", ["The pass mark is {v}.", "You need {v} to pass."],
           ["What score is needed to succeed?", "What is the minimum grade for a pass?", "Which result counts as passing?"]),
         F("room", "code", codes("A9.99", "A-999", "AA 99"), "Room", ["Classes are held in room {v}.", "Sessions meet in room {v}."],
           ["Where do the lessons happen?", "In which classroom does the group meet?", "What is the room for teaching?"]),
         F("words", "count", count(1500, 4000, 250), "Essay length (words)",
           ["The essay must not exceed {v} words.", "Essays have a limit of {v} words."],
           ["How long can the written assignment be?", "What is the maximum length of the coursework?",
            "How many words are allowed at most?"]),
         F("fee", "money", money(200, 1800, cents=0.1), "Fee", ["The course fee is {v}.", "Tuition for the module is {v}."],
           ["How much does it cost to take the module?", "What is the tuition charge?", "What do students pay?"])],
    ),
    "flat": D(
        ["Lettings", "Estates", "Property"],
        ["To let: a flat through {e}", "{e}: property details", "Rental listing from {e}"],
        ["The flat is unfurnished.", "Viewings are by appointment.", "The building has a shared garden.",
         "Bills are not included.", "The kitchen was renovated recently."],
        [F("rent", "money", money(650, 2400, cents=0.0), "Rent per month",
           ["The rent is {v} per month.", "It is offered at {v} a month."],
           ["How much do tenants pay monthly?", "What does it cost to live there each month?", "What is the monthly charge?"]),
         F("deposit", "duration", duration("week", 4, 6), "Deposit", ["The deposit equals {v} of rent.", "A deposit of {v} of rent is required."],
           ["How large is the security payment?", "What sum must be put down before moving in?", "How big is the deposit?"]),
         F("area", "count", count(38, 140), "Floor area (m²)", ["The flat measures {v} square metres.", "It has {v} m² of living space."],
           ["How big is the apartment?", "What is the size of the home?", "How much space is there?"]),
         F("free", "date", date, "Available from", ["It is available from {v}.", "Tenants can move in from {v}."],
           ["When can I get the keys?", "From what date is it free?", "When could a new tenant arrive?"]),
         F("agent", "person", person, "Agent", ["Viewings are arranged by {v}.", "The letting agent is {v}."],
           ["Whom do I call to see the place?", "Who handles the rental?", "Who organises visits?"]),
         F("station", "place", place, "Nearest station", ["The nearest station is {v}.", "It is a short walk from {v} station."],
           ["Which stop is closest for the train?", "Where is the nearest rail connection?", "What station is nearby?"]),
         F("pets", "condition", condition(("with the landlord's written consent", "written consent"),
                                          ("if they are cats", "cats"), ("for a higher deposit", "higher deposit")),
           "Pets", ["Pets are allowed only {v}.", "Animals can live there only {v}."],
           ["Can I keep an animal in the flat?", "Are pets welcome?", "What is the rule on animals?"]),
         F("floor", "count", count(10, 32), "Floor", ["It is on floor {v}.", "The flat is on the {v}th floor."],
           ["How high up is the apartment?", "On which storey is it?", "What level of the building?"])],
    ),
    "restaurant": D(
        ["Kitchen", "Bistro", "Dining Rooms"],
        ["{e}: booking information", "Dining at {e}", "{e}: menus and reservations"],
        ["Our menu changes with the seasons.", "Please tell us about allergies when you book.",
         "We source vegetables from local farms.", "Children's portions are available.", "Dogs are welcome on the terrace."],
        [F("set", "money", money(22, 69), "Set menu", ["The three-course set menu costs {v}.", "A set menu of three courses is {v}."],
           ["How much is the fixed menu?", "What do three courses cost together?", "What is the price of the set dinner?"]),
         F("service", "percent", percent(8, 15), "Service charge", ["A service charge of {v} is added.", "We add {v} for service."],
           ["How much is put on the bill for the staff?", "What surcharge for service appears?", "Is there a service fee, and how big?"]),
         F("hold", "duration", duration("minute", 10, 30), "Table hold", ["Tables are held for {v}.", "We keep a table for {v} after the booking time."],
           ["How long will they wait if I am late?", "For how long is a reservation kept?", "What is the grace period for late guests?"]),
         F("group", "count", count(10, 24), "Largest group", ["Groups of up to {v} can book online.", "Online bookings take parties of at most {v}."],
           ["What is the biggest party the website accepts?", "How many people can one online reservation cover?",
            "How large can a group be without calling?"]),
         F("chef", "person", person, "Head chef", ["The head chef is {v}.", "{v} runs the kitchen."],
           ["Who cooks at {e}?", "Who is in charge of the food?", "Who leads the kitchen team?"]),
         F("last", "time", clock(21, 22), "Last orders", ["Last orders are taken at {v}.", "The kitchen takes its final orders at {v}."],
           ["How late can I still order food?", "When does the kitchen stop taking orders?", "What is the latest time to order?"]),
         F("closed", "weekday", weekday, "Closed", ["The restaurant is closed on {v}.", "We do not open on {v}."],
           ["On which day is it shut?", "Which day of the week is the day off?", "When can I not eat there?"]),
         F("corkage", "money", money(5, 25), "Corkage", ["Corkage is {v} per bottle.", "Bringing your own wine costs {v} a bottle."],
           ["What if I bring my own bottle?", "What is charged for wine from home?", "How much is the bottle fee?"])],
    ),
    "race": D(
        ["Running Club", "Race Committee", "Harriers"],
        ["{e} annual road race", "Race information from {e}", "{e}: entrant guide"],
        ["Water stations are placed every few kilometres.", "Headphones are discouraged for safety.",
         "Results are posted online the same evening.", "Changing rooms are at the sports hall.",
         "Spectators can follow the course on foot."],
        [F("day", "date", date, "Race day", ["The race takes place on {v}.", "Race day is {v}."],
           ["When is the event?", "On what date do runners compete?", "Which day is the run held?"]),
         F("start", "time", clock(8, 10), "Start time", ["The gun goes at {v}.", "Runners start at {v}."],
           ["At what time does the race begin?", "When do competitors set off?", "When is the start?"]),
         F("distance", "decimal", decimal(5, 30), "Distance (km)", ["The course is {v} km long.", "Runners cover {v} km."],
           ["How far is the route?", "How many kilometres is the race?", "What is the length of the course?"]),
         F("fee", "money", money(12, 45), "Entry fee", ["Entry costs {v}.", "The entry fee is {v}."],
           ["How much to sign up?", "What is the price of taking part?", "What do participants pay to enter?"]),
         F("cutoff", "duration", duration("hour", 2, 6), "Time limit", ["The course closes after {v}.", "There is a time limit of {v}."],
           ["How long do slower runners have to finish?", "When does the course close for stragglers?", "What is the cut-off?"]),
         F("pickup", "place", place, "Number pick-up", ["Race numbers are collected in {v}.", "Pick up your number in {v}."],
           ["Where do I get my bib?", "In which town are numbers handed out?", "Where is the registration tent?"]),
         F("director", "person", person, "Race director", ["The race director is {v}.", "{v} directs the event."],
           ["Who organises the run?", "Who is in charge on the day?", "Who leads the race team?"]),
         F("age", "count", count(14, 18), "Minimum age", ["Entrants must be {v} or older.", "Runners must be at least {v} on race day."],
           ["How young can a runner be?", "What is the lowest age for entry?", "From what age can you compete?"])],
    ),
    "warehouse": D(
        ["Logistics", "Distribution", "Freight"],
        ["{e}: site safety rules", "Safety on the {e} site", "{e} warehouse induction"],
        ["Report every near miss to your supervisor.", "Keep walkways clear at all times.",
         "Do not use mobile phones while driving equipment.", "Spills must be cleaned up at once.",
         "Visitors must stay with their host."],
        [F("speed", "count", count(10, 25), "Speed limit (km/h)", ["Forklifts may not exceed {v} km/h.", "The speed limit for trucks inside is {v} km/h."],
           ["How fast can lift trucks go indoors?", "What is the maximum vehicle speed in the building?",
            "How quick may a forklift drive?"]),
         F("height", "decimal", decimal(1.5, 4.5), "Stack height (m)", ["Pallets may be stacked up to {v} m.", "The maximum stacking height is {v} m."],
           ["How tall can a pile of pallets be?", "What is the highest a stack may reach?", "How high may goods be piled?"]),
         F("aider", "person", person, "First aider", ["The first aider on this shift is {v}.", "First aid is given by {v}."],
           ["Whom do I fetch if someone is hurt?", "Who treats injuries?", "Who has first aid duty?"]),
         F("muster", "code", codes("A9", "AA-9", "Gate A"), "Assembly point", ["In a fire, gather at point {v}.", "The assembly point is {v}."],
           ["Where should everyone go when the alarm sounds?", "Where do staff meet after an evacuation?", "What is the muster location?"]),
         F("report", "duration", duration("hour", 2, 24), "Incident report", ["Accidents must be reported within {v}.", "File a report no later than {v} after any accident."],
           ["How quickly must an injury be written up?", "What is the deadline for reporting an accident?",
            "By when must an incident be recorded?"]),
         F("break", "time", clock(10, 15), "Main break", ["The main break starts at {v}.", "Lunch break begins at {v}."],
           ["When do staff stop for food?", "What time is the meal break?", "At what hour does the pause begin?"]),
         F("vest", "condition", condition(("in the loading bays", "loading bay"), ("whenever vehicles are moving", "vehicles"),
                                          ("outside the offices", "outside the offices")),
           "High-visibility vests", ["Hi-vis vests must be worn {v}.", "Wear a high-visibility vest {v}."],
           ["Do I always need reflective clothing?", "Where is the bright jacket compulsory?", "When must workers wear a vest?"])],
    ),
    "product": D(
        ["Appliances", "Outdoor", "Electronics"],
        ["{e} product sheet", "Meet the new model from {e}", "{e}: technical data"],
        ["It ships in a recyclable box.", "The manual is available in six languages.", "Spare parts are sold separately.",
         "It is designed for everyday use.", "Register online to extend your cover."],
        [F("model", "code", codes("AA-999", "A99", "AAA 999"), "Model", ["The model number is {v}.", "Order it as model {v}."],
           ["What is the product called in the catalogue?", "Under which reference is it sold?", "What is its type number?"]),
         F("weight", "decimal", decimal(0.4, 12), "Weight (kg)", ["It weighs {v} kg.", "The unit weighs {v} kg."],
           ["How heavy is it?", "What does the device weigh?", "What is its mass?"]),
         F("battery", "count", count(10, 40), "Battery life (hours)", ["The battery lasts {v} hours.", "One charge gives {v} hours of use."],
           ["How long does it run without a plug?", "How much use do I get between charges?", "What is the run time?"]),
         F("charge", "duration", duration("minute", 40, 180), "Charging time", ["A full charge takes {v}.", "Charging completely takes {v}."],
           ["How long must it stay on the charger?", "How much time to fill the battery?", "What is the recharge time?"]),
         F("price", "money", money(19, 899), "Price", ["It sells for {v}.", "The retail price is {v}."],
           ["How much does it cost?", "What is it priced at in shops?", "What do I pay for one?"]),
         F("warranty", "duration", duration("year", 2, 7), "Warranty", ["It comes with a {v} warranty.", "The guarantee covers {v}."],
           ["How long is it covered against faults?", "What is the guarantee period?", "For how long are repairs free?"]),
         F("designer", "person", person, "Designer", ["It was designed by {v}.", "The designer is {v}."],
           ["Who created the design?", "Whose design is it?", "Who drew it up?"]),
         F("water", "condition", condition(("in light rain", "light rain"), ("when the cover is closed", "cover is closed"),
                                           ("up to a depth of one metre", "one metre")),
           "Water resistance", ["It can be used {v}.", "It is safe to use {v}."],
           ["Can it get wet?", "Is it waterproof?", "How does it cope with water?"])],
    ),
    "theatre": D(
        ["Theatre", "Playhouse", "Opera House"],
        ["Now playing at {e}", "{e}: what's on", "{e}: audience information"],
        ["Latecomers are admitted at a suitable break.", "Photography is not allowed during the show.",
         "Cloakroom space is limited.", "The bar opens an hour before the performance.", "Large bags may be checked."],
        [F("until", "date", date, "Runs until", ["The production runs until {v}.", "The show closes on {v}."],
           ["When is the final performance?", "How long is the play on for?", "By what date must I see it?"]),
         F("curtain", "time", clock(18, 20), "Curtain up", ["Evening shows start at {v}.", "Curtain up is at {v}."],
           ["What time does the play begin?", "When does the performance start?", "When do the lights go down?"]),
         F("runtime", "duration", duration("minute", 95, 190), "Running time", ["The show lasts {v}, including the interval.", "Running time is {v} with one interval."],
           ["How long is the performance altogether?", "How much of my evening does it take?", "What is its length?"]),
         F("ticket", "money", money(14, 95), "Tickets from", ["Tickets start at {v}.", "The cheapest seats cost {v}."],
           ["What is the lowest price for a seat?", "How cheap can a ticket be?", "What is the entry-level price?"]),
         F("director", "person", person, "Director", ["It is directed by {v}.", "The director is {v}."],
           ["Who staged the production?", "Who is behind this production?", "Who directs it?"]),
         F("age", "count", count(10, 16), "Age guidance", ["It is recommended for ages {v} and up.", "Age guidance: {v}+."],
           ["Is it suitable for young children, and from what age?", "What is the minimum suggested age?",
            "How old should audience members be?"]),
         F("box", "phone", phone, "Box office", ["The box office number is {v}.", "Book by phone on {v}."],
           ["How do I reserve seats by telephone?", "What number sells tickets?", "Which line reaches ticket sales?"])],
    ),
    "courier": D(
        ["Couriers", "Parcel Service", "Express"],
        ["{e}: sending a parcel", "{e} delivery terms", "Shipping with {e}"],
        ["Pack fragile items with plenty of padding.", "Labels must be fixed on the largest side.",
         "We deliver on weekdays and Saturdays.", "Tracking updates are sent by email.", "Collections can be booked online."],
        [F("cutoff", "time", clock(14, 18), "Next-day cut-off", ["Parcels handed in before {v} are delivered the next day.", "The next-day cut-off is {v}."],
           ["By what time must I drop a package for it to arrive tomorrow?", "What is the deadline for overnight shipping?",
            "Until when can I send for delivery on the following day?"]),
         F("max_kg", "count", count(20, 40), "Weight limit (kg)", ["Parcels may weigh up to {v} kg.", "The weight limit is {v} kg."],
           ["How heavy can a package be?", "What is the maximum weight accepted?", "How many kilos at most?"]),
         F("price", "money", money(4, 19), "Standard price", ["A standard parcel costs {v}.", "Standard delivery is {v}."],
           ["How much to send an ordinary package?", "What is the usual shipping charge?", "What do I pay for a regular parcel?"]),
         F("depot", "place", place, "Depot", ["Undelivered parcels wait at the depot in {v}.", "Missed deliveries go to our {v} depot."],
           ["Where do I collect a parcel I missed?", "In which town is the depot?", "Where are failed deliveries kept?"]),
         F("keep", "duration", duration("day", 5, 14), "Holding period", ["The depot keeps parcels for {v}.", "Parcels are held for {v} before return."],
           ["How long before an unclaimed package goes back?", "How long will they store my parcel?", "What is the collection window?"]),
         F("cover", "money", money(50, 500, cents=0.0), "Compensation", ["Compensation is limited to {v} per parcel.", "Lost parcels are covered up to {v}."],
           ["How much will I get back if it is lost?", "What is the maximum payout for a missing package?", "What is the liability limit?"]),
         F("signature", "condition", condition(("for parcels worth more than the cover limit", "cover limit"),
                                               ("when the sender asks for it", "sender"),
                                               ("for deliveries to offices", "offices")),
           "Signature", ["A signature is required {v}.", "Drivers ask for a signature {v}."],
           ["Do I have to sign for every delivery?", "When is a signature needed?", "Is signing always necessary?"])],
    ),
    "contest": D(
        ["Photographic Society", "Camera Club", "Arts Trust"],
        ["{e} open photo competition", "Enter the {e} competition", "{e}: competition rules"],
        ["Entries must be the photographer's own work.", "Light editing is allowed.", "Winning images will be exhibited.",
         "Judges' decisions are final.", "Entrants keep the copyright of their images."],
        [F("deadline", "date", date, "Closing date", ["Entries close on {v}.", "The closing date is {v}."],
           ["By when must photos be submitted?", "What is the last day to take part?", "When is the deadline?"]),
         F("fee", "money", money(3, 15), "Entry fee", ["Each entry costs {v}.", "The fee per image is {v}."],
           ["How much to enter one picture?", "What is the charge per photograph?", "What does a submission cost?"]),
         F("max", "count", count(10, 30), "Entries per person", ["Each photographer may submit up to {v} images.", "The limit is {v} entries per person."],
           ["How many pictures can one person send?", "What is the maximum number of submissions each?", "How many photos per entrant?"]),
         F("prize", "money", money(200, 2500, cents=0.0), "First prize", ["The winner receives {v}.", "First prize is {v}."],
           ["How much does the best photo earn?", "What is the top award worth?", "What does first place win?"]),
         F("judge", "person", person, "Judge", ["This year's judge is {v}.", "Entries are judged by {v}."],
           ["Who picks the winners?", "Who assesses the pictures?", "Who decides the results?"]),
         F("pixels", "count", count(1600, 4000, 200), "Image size (pixels)", ["Images must be at least {v} pixels on the long side.", "The long edge must measure {v} pixels or more."],
           ["How big must the files be?", "What is the minimum resolution?", "How many pixels along the longest edge?"]),
         F("results", "date", date, "Results", ["Results are announced on {v}.", "Winners will be told on {v}."],
           ["When will entrants hear the outcome?", "On what date are winners named?", "When are the results out?"])],
    ),
}  # fmt: skip

# Facts any organisation may state, drawn 1-3 per page besides the domain's own (and asked about like them).
GENERIC_FACTS: tuple[Fact, ...] = (
    F("address", "address", address, "Address", ["You will find us at {v}.", "Our address is {v}."],
      ["Where is {e} located?", "Where should I go to find the place?", "What is the location of the premises?"]),
    F("founded", "count", count(1890, 2019), "Founded", ["{e} was founded in {v}.", "We have been open since {v}."],
      ["When did the organisation start?", "In what year did it begin?", "How long ago was it established, as a year?"]),
    F("staff", "count", count(12, 240), "Staff", ["A team of {v} people works here.", "We employ {v} staff."],
      ["How many employees are there?", "How large is the workforce?", "How many people are on the payroll?"]),
    F("email", "email", email, "Email", ["Write to {v} with any questions.", "Our email address is {v}."],
      ["How can I contact them in writing?", "Where should written queries be sent?", "What is the contact mailbox?"]),
    F("deputy", "person", person, "Deputy", ["When the manager is away, {v} is the person to contact.",
                                             "{v} deputises when the manager is absent."],
      ["Who stands in when the boss is not there?", "Who can I reach when the usual person is away?",
       "Who is the deputy?"]),
    F("visitors", "count", count(1200, 90000, 10), "Visitors last year",
      ["Last year we welcomed {v} visitors.", "About {v} people used our services last year."],
      ["How many people came in the previous year?", "What was last year's attendance?",
       "How busy was the past twelve months, in people?"]),
)  # fmt: skip

_GENERIC = [
    "This page replaces all earlier versions.", "Please read it carefully before your visit.",
    "If anything is unclear, ask a member of staff.", "We review these details every year.",
    "Thank you for your understanding.", "Details may change at short notice.",
    "A printed copy is available on request.", "Your feedback helps us improve.",
    "We aim to reply to every message within a few days.", "All prices include tax unless stated otherwise.",
    "Large print versions can be requested.", "These arrangements apply until further notice.",
    "Please keep this information for later.", "Some of these rules exist for safety reasons.",
    "We are grateful to our neighbours for their patience.", "Our team is happy to help with any questions.",
]  # fmt: skip
_CURRENCIES = [("£", ""), ("$", ""), ("€", ""), ("", "crowns"), ("", "francs")]
_UNIQUE_KINDS = frozenset({"code", "version", "phone", "email", "address"})
_MAX_GENERIC = 3  # generic filler sentences per page, at most
_HELD_OUT_SHARE = 7  # one organisation stem in this many belongs to the held-out split

LAYOUTS = ("prose", "bullets", "table", "faq", "sections", "steps", "memo", "footnotes")


# ---------------------------------------------------------------- text with spans


class _Page:
    """Text built piece by piece, remembering where each fact's answer lands."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: dict[str, list[int]] = {}

    def add(self, text: str) -> None:
        self.text += text

    def fact(self, template: str, entity: str, key: str, value: Value, *, lower_first: bool = False) -> None:
        """Append ``template`` filled in; the answer's span is recorded under ``key``."""
        display, answer = value
        head, tail = template.split("{v}")
        head = head.format(e=entity)
        if lower_first and head and not template.startswith("{"):
            head = head[0].lower() + head[1:]
        at = len(self.text) + len(head) + display.index(answer)
        self.text += head + display + tail.format(e=entity)
        self.spans[key] = [at, at + len(answer)]


def _org(rng: random.Random, domain: Domain, split: str) -> str:
    want = split == "heldout"
    while True:
        stem = _compose(rng, _PLACE_A + _SUR_A, _PLACE_B + _SUR_B)
        if (sum(map(ord, stem)) % _HELD_OUT_SHARE == 0) == want:
            return f"{stem} {rng.choice(domain.kinds)}"


def estimate_tokens(text: str) -> int:
    """A SmolLM2-like token count without a tokenizer: ~1.25 per word, one per digit, one per punctuation mark."""
    words = re.findall(r"[^\W\d_]+", text)
    return round(1.25 * len(words)) + sum(c.isdigit() for c in text) + len(re.findall(r"[^\w\s]", text))


def _render(layout: str, rng: random.Random, domain: Domain, entity: str, chosen: list[tuple[Fact, Value]],
            boiler: list[str]) -> tuple[_Page, set[int]]:  # fmt: skip
    """The page body in ``layout``; also the indices of facts whose ``asks`` wording the page itself used (FAQ)."""
    page = _Page()
    used_asks: set[int] = set()
    title = rng.choice(domain.titles).format(e=entity)
    says = [rng.choice(f.says) for f, _ in chosen]
    page.add(rng.choice(["# ", "# ", "", "## "]) + title + "\n\n")
    intro = boiler.pop() if boiler else None
    if intro and layout not in ("memo",):
        page.add(intro + "\n\n")

    if layout == "prose":
        i, sentences_in_para = 0, 0
        while i < len(chosen):
            (f, v), say = chosen[i], says[i]
            if i + 1 < len(chosen) and rng.random() < 0.45:  # two facts in one sentence
                page.fact(say[:-1], entity, f.key, v)
                page.add(rng.choice([", and ", "; ", ", while "]))
                (g, w), say2 = chosen[i + 1], says[i + 1]
                page.fact(say2, entity, g.key, w, lower_first=True)
                i += 2
            else:
                page.fact(say, entity, f.key, v)
                i += 1
            sentences_in_para += 1
            if boiler and rng.random() < 0.3:
                page.add(" " + boiler.pop())
            if sentences_in_para >= rng.randint(2, 4) and i < len(chosen):
                page.add("\n\n")
                sentences_in_para = 0
            elif i < len(chosen):
                page.add(" ")
    elif layout in ("bullets", "table"):
        sentences = rng.random() < 0.5  # bullets: whole sentences, or "label: value"
        bullet = rng.choice(["- **{l}:** ", "- {l}: ", "* {l} - "])
        if layout == "table":
            head = rng.choice([("Item", "Details"), ("", ""), ("What", "Value"), ("Topic", "Information")])
            page.add(f"| {head[0]} | {head[1]} |\n|---|---|\n")
        for (f, v), say in zip(chosen, says, strict=True):
            if layout == "table":
                page.add(f"| {f.label} | ")
                page.fact("{v} |\n", entity, f.key, v)
            elif sentences:
                page.add("- ")
                page.fact(say + "\n", entity, f.key, v)
            else:
                page.add(bullet.format(l=f.label))
                page.fact("{v}\n", entity, f.key, v)
    elif layout == "faq":
        for i, ((f, v), say) in enumerate(zip(chosen, says, strict=True)):
            page.add(f"**{f.asks[0].format(e=entity)}**\n")
            used_asks.add(i)
            page.fact(say, entity, f.key, v)
            page.add("\n\n")
    elif layout == "sections":
        for (f, v), say in zip(chosen, says, strict=True):
            page.add(f"## {f.label}\n\n")
            page.fact(say, entity, f.key, v)
            if boiler and rng.random() < 0.4:
                page.add(" " + boiler.pop())
            page.add("\n\n")
    elif layout == "steps":
        page.add(rng.choice(["What to know:", "In order:", "Step by step:", "Please note:"]) + "\n\n")
        for n, ((f, v), say) in enumerate(zip(chosen, says, strict=True), 1):
            page.add(f"{n}. ")
            page.fact(say, entity, f.key, v)
            page.add("\n")
    elif layout == "memo":
        page.add(f"To: {rng.choice(['All staff', 'All members', 'Customers', 'Everyone on site'])}\n")
        page.add(f"From: {_person(rng)}, {entity}\n")
        page.add(f"Subject: {rng.choice(['Important changes', 'Please read', 'Update', 'Key information'])}\n\n")
        for (f, v), say in zip(chosen, says, strict=True):
            page.fact(say, entity, f.key, v)
            page.add(" " if rng.random() < 0.6 else "\n\n")
    elif layout == "footnotes":
        notes = sorted(rng.sample(range(len(chosen)), min(len(chosen), rng.randint(1, 2))))
        body = [i for i in range(len(chosen)) if i not in notes]
        for n, i in enumerate(notes, 1):
            page.add(f"- {chosen[i][0].label}: see note ({n})\n")
        for i in body:
            (f, v), say = chosen[i], says[i]
            page.add("- ")
            page.fact(say, entity, f.key, v)
            page.add("\n")
        page.add("\n" + rng.choice(["Notes", "Footnotes", "Exceptions"]) + "\n")
        for n, i in enumerate(notes, 1):
            (f, v), say = chosen[i], says[i]
            page.add(f"({n}) ")
            page.fact(say, entity, f.key, v)
            page.add("\n")
    else:  # pragma: no cover - LAYOUTS is checked by make_pages
        raise ValueError(layout)
    return page, used_asks


def _draw_values(rng: random.Random, ctx: dict[str, Any], facts: Sequence[Fact],
                 entity: str) -> list[tuple[Fact, Value]] | None:  # fmt: skip
    """A value per fact such that no answer is part of another value or of the organisation's name (every
    answer then points at one place of the page); None if the draws keep colliding."""
    chosen: list[tuple[Fact, Value]] = []
    for f in facts:
        for _ in range(50):
            value = f.make(rng, ctx)
            if f.kind in _UNIQUE_KINDS and value[1].lower() in reserved_text():
                continue  # a code of an evaluation page
            if value[1] not in entity and not any(value[1] in v[0] or v[1] in value[0] for _, v in chosen):
                chosen.append((f, value))
                break
        else:
            return None
    return chosen


def make_pages(n: int, seed: int, split: str = "train", *, n_facts: tuple[int, int] = (6, 8),
               n_generic: tuple[int, int] = (1, 3), tokens: tuple[int, int] = (150, 600), domains: Sequence[str] | None = None,
               layouts: Sequence[str] | None = None, tokenizer: Any = None) -> list[Doc]:  # fmt: skip
    """``n`` pages (see module doc): ``n_facts`` (inclusive; at most a domain's facts) facts each, ``tokens``
    (inclusive) long.

    The length is counted with ``tokenizer`` when given, else :func:`estimate_tokens`; a page whose facts alone
    are longer than its drawn length keeps them all. Deterministic in (n, seed, split, options).
    """
    chosen_domains = list(domains or DOMAINS)
    chosen_layouts = list(layouts or LAYOUTS)
    bad = [d for d in chosen_domains if d not in DOMAINS] + [x for x in chosen_layouts if x not in LAYOUTS]
    if bad:
        raise ValueError(f"unknown domains or layouts {bad}; domains: {list(DOMAINS)}, layouts: {list(LAYOUTS)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    lo, hi = n_facts
    if not 1 <= lo <= hi or lo > min(len(DOMAINS[d].facts) for d in chosen_domains):
        raise ValueError(f"n_facts must be 1 <= lo <= hi with lo <= the facts of every domain, got {n_facts}")
    count_tokens = (lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])) if tokenizer else estimate_tokens
    rng = random.Random(f"pages:{seed}:{split}")
    docs: list[Doc] = []
    while len(docs) < n:
        name = rng.choice(chosen_domains)
        domain = DOMAINS[name]
        layout = rng.choice(chosen_layouts)
        entity = _org(rng, domain, split)
        ctx = {"currency": rng.choice(_CURRENCIES), "date_order": rng.choice(["dm", "md"])}
        facts = rng.sample(domain.facts, rng.randint(lo, min(hi, len(domain.facts))))
        facts += rng.sample(GENERIC_FACTS, rng.randint(*n_generic))
        rng.shuffle(facts)
        chosen = _draw_values(rng, ctx, facts, entity)
        if chosen is None:
            continue
        target = rng.randint(*tokens)
        boiler = rng.sample(list(domain.boiler), len(domain.boiler))
        page, used = _render(layout, rng, domain, entity, chosen, boiler[:3])
        # a closing paragraph of the domain's remaining boilerplate and at most three generic sentences
        extra = rng.sample(_GENERIC, _MAX_GENERIC) + boiler[3:]
        text, closing = page.text.rstrip() + "\n", ""
        while extra and count_tokens(text + closing) < target:
            addition = extra.pop() + " "
            if count_tokens(text + closing + addition) > tokens[1]:
                break
            closing += addition
        text = text + ("\n" + closing.rstrip() + "\n" if closing else "")
        if not tokens[0] <= count_tokens(text) <= tokens[1]:
            continue  # outside the range whatever the filler: draw another page
        qa, probe = [], []
        for i, (f, (_, answer)) in enumerate(chosen):
            pool = [a for j, a in enumerate(f.asks) if not (i in used and j == 0)]
            q, p = rng.sample(pool, 2)
            base = {"answer": answer, "attribute": f"{'generic' if f in GENERIC_FACTS else name}.{f.key}",
                    "type": f.kind}
            qa.append({"question": q.format(e=entity), **base})
            probe.append({"question": p.format(e=entity), **base})
        docs.append({"id": doc_id(text), "kind": "page", "domain": name, "layout": layout, "text": text,
                     "entity": entity, "facts": {f.key: v[1] for f, v in chosen}, "spans": page.spans, "qa": qa,
                     "probe_qa": probe, "split": split})  # fmt: skip
    return docs
