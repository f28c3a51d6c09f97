"""Prose-like synthetic documents for Doc-to-LoRA: policies, timetables, product sheets, runbooks, venue guides.

:func:`pipelines.d2l.synth.make_fact_docs` states facts about companies in
one-line templates; the documents agents meet (``evals/docs``) are paragraphs
of ordinary prose about return windows, fares, thresholds and opening hours,
whose answers are mostly numbers, amounts, times and proper names. This module
writes such documents: one fictional organisation per document, a title line,
3-6 facts of its domain each stated in one of several phrasings, mixed with
the domain's boilerplate sentences; every value is drawn fresh (numbers,
prices, times, invented towns, people and codes), so nothing can be memorised.
Questions follow the eval's style ("How many days ...?", answer "45").

Same document schema as ``make_fact_docs`` (``text``, ``facts``, ``spans``,
``qa``, ``probe_qa``, ``split``; ``kind="prose"``), deterministic per seed;
``split="heldout"`` uses the entity names training never sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from pipelines.d2l.synth import (
    _CODAS,
    _ONSETS,
    Doc,
    Piece,
    _entities,
    _letters,
    doc_id,
    join_with_spans,
    state,
)

__all__ = ["DOMAINS", "make_prose_docs"]

_FIRST = ["Alma", "Bruno", "Cleo", "Dmitri", "Esme", "Felix", "Gita", "Hector", "Iris", "Jonas", "Kaia", "Leon",
          "Maren", "Niko", "Olga", "Pavel", "Rosa", "Soren", "Talia", "Viggo"]  # fmt: skip


def _place(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_CODAS)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {_place(rng)}"


def _num(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(lo, hi))


def _money(rng: random.Random) -> str:
    return f"{rng.randint(1, 89)}.{rng.choice(['00', '50', '95', '99', '25', '75', '49'])}"


def _clock(rng: random.Random) -> str:
    return f"{rng.randint(5, 22)}:{rng.choice(['00', '05', '15', '20', '30', '40', '45', '50'])}"


def _code(rng: random.Random) -> str:
    return f"{_letters(rng, 2)}-{rng.randint(10, 999)}"


# domain -> (title templates, boilerplate sentences, facts); a fact is
# (key, value maker, statement templates, question templates, paraphrased question templates).
# {e} = the organisation, {v} = the value; a question never contains the value.
_Fact = tuple[str, Callable[[random.Random], str], list[str], list[str], list[str]]
DOMAINS: dict[str, tuple[list[str], list[str], list[_Fact]]] = {
    "returns": (
        ["{e}: Returns and Refunds", "Returning an item to {e}"],
        ["We want every customer to be happy with their order.", "Please keep your receipt or order number.",
         "Items must be unused and in their original packaging.", "Our team checks every parcel by hand."],
        [("window", _num(10, 120), ["You can return an item within {v} days of delivery.",
                                    "Returns are accepted for {v} days after the parcel arrives."],
          ["How many days after delivery can you return an item to {e}?"],
          ["Within how many days must a return to {e} be made?"]),
         ("fee", _num(3, 30), ["A restocking fee of {v}% is deducted from opened items.",
                               "Opened items carry a {v}% restocking fee."],
          ["What restocking fee does {e} charge on opened items?"], ["How big is the restocking fee at {e}?"]),
         ("label", _money, ["A prepaid return label costs ${v}.", "We can send a return label for ${v}."],
          ["How much does a prepaid return label from {e} cost?"], ["What is the price of a return label at {e}?"]),
         ("refund_days", _num(2, 21), ["Refunds are paid within {v} business days.",
                                       "Your money comes back within {v} business days."],
          ["Within how many business days does {e} pay refunds?"], ["How fast are refunds paid by {e}, in days?"]),
         ("warehouse", _place, ["Returned parcels go to our warehouse in {v}.",
                                "All returns are handled at the {v} warehouse."],
          ["In which town is the {e} returns warehouse?"], ["Where does {e} handle its returns?"]),
         ("damage_hours", _num(12, 96), ["Report damaged deliveries within {v} hours.",
                                         "Damage must be reported no later than {v} hours after delivery."],
          ["Within how many hours must damage be reported to {e}?"],
          ["How many hours does {e} allow for reporting damage?"])],
    ),
    "timetable": (
        ["{e} timetable", "Travelling with {e}"],
        ["Buses run every day except public holidays.", "Please have your ticket ready when you board.",
         "Bicycles are allowed outside rush hour.", "Timetables may change during roadworks."],
        [("first", _clock, ["The first departure leaves at {v}.", "Service starts with the {v} departure."],
          ["When does the first {e} service leave?"], ["At what time does {e} start running?"]),
         ("last", _clock, ["The last departure is at {v}.", "The final service of the day leaves at {v}."],
          ["When does the last {e} service leave?"], ["What time is the final {e} departure?"]),
         ("fare", _money, ["A single ticket costs {v} crowns.", "Single fares are {v} crowns."],
          ["How much is a single ticket on {e}?"], ["What does a single {e} fare cost in crowns?"]),
         ("platform", _num(1, 24), ["Trains leave from platform {v}.", "Boarding is at platform {v}."],
          ["From which platform does {e} leave?"], ["Which platform is used by {e}?"]),
         ("terminus", _place, ["The line ends in {v}.", "Every service terminates at {v}."],
          ["Where does the {e} line end?"], ["Which town is the terminus of {e}?"]),
         ("minutes", _num(5, 90), ["The whole trip takes {v} minutes.", "The journey lasts about {v} minutes."],
          ["How many minutes does the {e} journey take?"], ["How long is a trip with {e}, in minutes?"])],
    ),
    "product": (
        ["{e} product sheet", "Meet the {e}"],
        ["It ships in a recyclable box.", "The manual is available in six languages.",
         "It is designed for everyday use at home.", "Spare parts are sold separately."],
        [("weight", _num(2, 40), ["It weighs {v} kg.", "The unit weighs only {v} kg."],
          ["How much does the {e} weigh in kg?"], ["What is the weight of the {e}?"]),
         ("battery", _num(3, 72), ["The battery lasts {v} hours.", "One charge gives {v} hours of use."],
          ["How many hours does the {e} battery last?"], ["How long does one charge of the {e} last?"]),
         ("price", _money, ["It sells for ${v}.", "The retail price is ${v}."],
          ["How much does the {e} cost?"], ["What is the retail price of the {e}?"]),
         ("warranty", _num(1, 10), ["It comes with a {v}-year warranty.", "The warranty covers {v} years."],
          ["How many years of warranty does the {e} have?"], ["How long is the {e} warranty, in years?"]),
         ("model", _code, ["The model number is {v}.", "Order it as model {v}."],
          ["What is the model number of the {e}?"], ["Under which model number is the {e} sold?"]),
         ("designer", _person, ["It was designed by {v}.", "The designer is {v}."],
          ["Who designed the {e}?"], ["Name the designer of the {e}."])],
    ),
    "runbook": (
        ["Runbook: {e}", "On-call notes for {e}"],
        ["Check the dashboards before you change anything.", "Write every action into the incident log.",
         "Do not restart the database during business hours.", "Keep the status page up to date."],
        [("threshold", _num(50, 99), ["Page the on-call engineer when disk use passes {v}%.",
                                      "The alert fires at {v}% disk use."],
          ["At what disk use does the {e} alert fire?"], ["Which disk percentage triggers a page for {e}?"]),
         ("escalate", _num(5, 60), ["Escalate if there is no answer within {v} minutes.",
                                    "Unanswered pages escalate after {v} minutes."],
          ["After how many minutes do unanswered {e} pages escalate?"],
          ["How long before a {e} page is escalated, in minutes?"]),
         ("owner", _person, ["The service owner is {v}.", "{v} owns this service."],
          ["Who owns the {e} service?"], ["Name the owner of {e}."]),
         ("port", _num(2000, 9999), ["The service listens on port {v}.", "Health checks use port {v}."],
          ["Which port does {e} listen on?"], ["On what port does {e} run?"]),
         ("region", _place, ["It runs in the {v} data centre.", "Production lives in the {v} region."],
          ["In which data centre does {e} run?"], ["Where is {e} hosted?"]),
         ("retries", _num(2, 12), ["Jobs are retried {v} times before they fail.",
                                   "The worker gives up after {v} retries."],
          ["How many times are {e} jobs retried?"], ["After how many retries does {e} give up?"])],
    ),
    "venue": (
        ["Visiting {e}", "{e}: a guide for guests"],
        ["Guests are asked to arrive early.", "Photography is allowed in most rooms.",
         "The building has step-free access.", "Coats can be left at the front desk."],
        [("capacity", _num(40, 2500), ["The main hall seats {v} people.", "Up to {v} guests fit in the hall."],
          ["How many people does the main hall of {e} seat?"], ["What is the capacity of {e}?"]),
         ("opens", _clock, ["Doors open at {v}.", "We open our doors at {v}."],
          ["At what time does {e} open?"], ["When do the doors of {e} open?"]),
         ("parking", _money, ["Parking costs {v} crowns per day.", "A day of parking is {v} crowns."],
          ["How much is a day of parking at {e}?"], ["What does parking at {e} cost per day?"]),
         ("station", _place, ["The nearest station is {v}.", "Take the train to {v} station."],
          ["What is the nearest station to {e}?"], ["Which station is closest to {e}?"]),
         ("manager", _person, ["The venue manager is {v}.", "Bookings are handled by {v}."],
          ["Who manages {e}?"], ["Name the manager of {e}."]),
         ("wifi", _code, ["The guest wifi password is {v}.", "Use the wifi code {v}."],
          ["What is the wifi password at {e}?"], ["Which wifi code do guests of {e} use?"])],
    ),
}  # fmt: skip


def make_prose_docs(n: int, seed: int, split: str = "train", *, n_facts: tuple[int, int] = (3, 6),
                    domains: Sequence[str] | None = None) -> list[Doc]:  # fmt: skip
    """``n`` prose-like documents (see module doc), ``n_facts`` (inclusive range) facts each.

    Deterministic in (n, seed, split, options).
    """
    chosen = list(domains or DOMAINS)
    unknown = [d for d in chosen if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; choose from {list(DOMAINS)}")
    lo, hi = n_facts
    if not 1 <= lo <= hi <= min(len(DOMAINS[d][2]) for d in chosen):
        raise ValueError(f"n_facts must be 1 <= lo <= hi <= facts per domain, got {n_facts}")
    rng = random.Random(f"prose:{seed}:{split}")
    names = _entities(split)
    docs: list[Doc] = []
    for _ in range(n):
        domain = rng.choice(chosen)
        titles, boiler, facts_def = DOMAINS[domain]
        entity = rng.choice(names)
        picked = rng.sample(facts_def, rng.randint(lo, hi))
        facts = {}
        for key, make, *_ in picked:
            facts[key] = make(rng)
            while facts[key] in entity:  # an invented town may share the organisation's first word
                facts[key] = make(rng)
        body: list[Piece] = [state(rng.choice(statements), entity, key, facts[key])
                             for key, _, statements, _, _ in picked]  # fmt: skip
        body += [(s, None, 0) for s in rng.sample(boiler, rng.randint(0, 2))]
        rng.shuffle(body)
        text, spans = join_with_spans(body, facts, prefix=rng.choice(titles).format(e=entity) + "\n\n")
        qa = [{"question": rng.choice(q).format(e=entity), "answer": facts[key], "attribute": f"{domain}.{key}"}
              for key, _, _, q, _ in picked]  # fmt: skip
        probe = [{"question": rng.choice(p).format(e=entity), "answer": facts[key],
                  "attribute": f"{domain}.{key}"} for key, _, _, _, p in picked]  # fmt: skip
        docs.append({"id": doc_id(text), "kind": "prose", "domain": domain, "text": text, "entity": entity,
                     "facts": facts, "spans": spans, "qa": qa, "probe_qa": probe, "split": split})  # fmt: skip
    return docs

