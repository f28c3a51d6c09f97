"""Redaction: recall on planted secrets, false positives on lookalikes, and speed.

To run:  .venv/bin/python evals/bench_redact.py [--episodes 2000]

Recall and false positives use the corpora of ``tests/selectors/redaction_corpus.py``. Speed runs
:class:`~agent_sleep.selectors.redact.RedactSelector` over helpdesk-like episodes (five turns, a
tool call with JSON arguments, feedback; about 1 in 10 carries a planted item) on one core, and
also times :meth:`Redactor.redact` alone on the same text. Writes evals/results/redact.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_sleep.selectors.candidates import EpisodeCandidate, FeedbackItem  # noqa: E402
from agent_sleep.selectors.redact import RedactSelector, Redactor  # noqa: E402
from tests.selectors.redaction_corpus import LOOKALIKES, PLANTED  # noqa: E402

USER = [
    "Hi, my order A-{n} arrived on 2024-03-{d:02d} but the blender jug is cracked. Can I get a replacement?",
    "I was charged $1{n}.99 twice for order #{n}. Please refund one of the charges.",
    "How do I reset my password? The link from yesterday expired after 24 hours.",
    "Is version 2.{d}.1 of the app compatible with Android 14? It crashes on the settings page.",
    "My package with tracking 1Z999AA1{n}56784 still shows 'label created' after {d} days.",
]
ANSWER = [
    "I'm sorry about that! I've created replacement order A-{n}9 at no cost; it ships within 2 business days. "
    "You don't need to return the damaged jug. Is there anything else I can help with?",
    "Thanks for flagging this. I can see two charges of $1{n}.99 on 2024-03-{d:02d}; I've refunded the duplicate, "
    "and it should appear on your statement within 5-7 business days.",
    "You can request a new link from the sign-in page: click 'Forgot password', enter your e-mail, and use the "
    "link within 24 hours. If it still fails, clear your browser cache and try again.",
]


def _episode(i: int, rng: random.Random) -> EpisodeCandidate:
    n, d = rng.randint(10000, 99999), rng.randint(1, 28)
    user = rng.choice(USER).format(n=n, d=d)
    answer = rng.choice(ANSWER).format(n=n, d=d)
    if i % 10 == 0:
        user += " " + PLANTED[i // 10 % len(PLANTED)].text
    messages = (
        {"role": "system", "content": "You are the ACME helpdesk agent. Be brief and kind."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "lookup_order",
                                                              "arguments": {"order_id": f"A-{n}", "fields": ["status", "items"]}}]},  # fmt: skip
        {"role": "tool", "name": "lookup_order", "content": json.dumps({"status": "delivered", "date": f"2024-03-{d:02d}",
                                                                          "items": [{"sku": "BLD-220-RED", "qty": 1, "price": 89.0}]})},  # fmt: skip
        {"role": "assistant", "content": answer},
    )
    feedback = (FeedbackItem(f"f{i}", 1.0, "good", "Quick and correct.", None, "human", datetime.now(UTC)),)
    return EpisodeCandidate(f"ep{i}", "helpdesk", datetime.now(UTC), "completed", "resolved", messages, feedback)


def _chars(c: EpisodeCandidate) -> int:
    return len(json.dumps(c.messages)) + sum(len(f.comment or "") for f in c.feedback)


def main() -> None:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "redact.json")
    args = parser.parse_args()

    t = time.perf_counter()
    redactor = Redactor()
    setup_s = time.perf_counter() - t

    found = [p for p in PLANTED if p.secret not in (r := redactor.redact(p.text)).text and p.kind in r.counts]
    by_kind = Counter(p.kind for p in PLANTED)
    hit_kind = Counter(p.kind for p in found)
    false_pos = [t for t in LOOKALIKES if redactor.redact(t).findings]

    rng = random.Random(0)
    episodes = [_episode(i, rng) for i in range(args.episodes)]
    chars = sum(map(_chars, episodes))
    selector = RedactSelector(redactor)
    t = time.perf_counter()
    selection = selector.select(episodes)
    select_s = time.perf_counter() - t
    texts = [m.get("content") or "" for e in episodes for m in e.messages]
    t = time.perf_counter()
    for text in texts:
        redactor.redact(text)
    redact_s = time.perf_counter() - t
    redacted = sum(d.reason != "nothing to redact" for d in selection.decisions)

    result = {
        "setup_s": round(setup_s, 3),
        "planted": len(PLANTED), "recalled": len(found), "recall": round(len(found) / len(PLANTED), 4),
        "recall_by_kind": {k: f"{hit_kind[k]}/{n}" for k, n in by_kind.items()},
        "lookalikes": len(LOOKALIKES), "false_positives": len(false_pos),
        "episodes": args.episodes, "episode_chars": chars, "episodes_redacted": redacted,
        "selector_episodes_per_s": round(args.episodes / select_s), "selector_chars_per_s": round(chars / select_s),
        "redact_chars_per_s": round(sum(map(len, texts)) / redact_s),
        "hours_for_100k_episodes": round(100_000 / (args.episodes / select_s) / 3600, 3),
    }  # fmt: skip
    write_results(args.out, result)
    for k, v in result.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
