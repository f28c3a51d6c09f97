"""Pick the novelty selector's default threshold: MiniLM cosine on helpdesk text pairs, and its speed.

To run:  HF_HUB_OFFLINE=1 .venv/bin/python evals/novelty_threshold.py [--threads N]

Three kinds of pairs: ``paraphrase`` (the same request or fact in other words: a candidate that adds
nothing to what is consolidated), ``same_topic`` (another request on the same topic: new material that
must be kept), ``unrelated`` (other topics). Prints the similarity distribution of each and, per
threshold, how many paraphrases would be dropped and how many same-topic pairs wrongly dropped; also
load time and embeddings/s on ~200-character texts. Writes evals/results/novelty.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EPISODE_REPLY = "Thanks for contacting us, let me check that for you."

PARAPHRASE = [
    ("How do I reset my password?", "I forgot my password, how can I set a new one?"),
    ("My package hasn't arrived yet and it's been two weeks.", "It's been 14 days and my order still isn't here."),
    ("Can I return an item after 30 days?", "Is it possible to send something back once the 30-day window has passed?"),
    ("The app crashes every time I open the settings page.", "Whenever I go to settings the application closes on its own."),
    ("How long does a refund take to show up on my card?", "When will the refunded money appear on my credit card?"),
    ("I was charged twice for the same order.", "My card got billed two times for one purchase."),
    ("Do you ship to Canada?", "Is delivery to Canada available?"),
    ("How can I change the email address on my account?", "I want to update the e-mail linked to my account, how?"),
    ("The blender arrived with a cracked jug.", "My blender was delivered and the jug is broken."),
    ("Refunds are issued to the original payment method within 5 business days.",
     "We send the refund back to the card you paid with, within five working days."),
    ("Orders over $50 ship free within the US.", "Shipping is free in the United States for orders above 50 dollars."),
    ("You can cancel an order until it has shipped.", "An order may be cancelled up to the moment it leaves the warehouse."),
    ("How do I cancel my subscription?", "What's the way to stop my subscription?"),
    ("The discount code SAVE10 doesn't work at checkout.", "At checkout the promo code SAVE10 is rejected."),
    ("I can't log in, it says my account is locked.", "Login fails with a message that my account has been locked."),
    ("Where can I download my invoice?", "How do I get a copy of my invoice?"),
    ("Can I change the delivery address after ordering?", "Is it possible to update the shipping address once the order is placed?"),
    ("The headphones only play sound in the left ear.", "Audio comes out of the left earbud only."),
    ("Our support team is available Monday to Friday, 9am to 5pm.", "Support is open on weekdays from 9 to 5."),
    ("Warranty claims need the original receipt.", "To claim under warranty you must provide the original proof of purchase."),
    ("How do I turn on two-factor authentication?", "Where do I enable 2FA for my account?"),
    ("The tracking number says the label was created but nothing since.",
     "Tracking has shown only 'label created' and no updates after that."),
    ("I'd like to speak to a manager about my complaint.", "Please escalate my complaint to a supervisor."),
    ("Gift cards cannot be exchanged for cash.", "It is not possible to redeem a gift card for money."),
    ("The printer shows error E04 and won't print.", "My printer displays E04 and refuses to print anything."),
    ("Can I get an invoice with my company's VAT number?", "I need the invoice to include our business VAT ID."),
    ("My order was delivered to the wrong address.", "The parcel went to an address that isn't mine."),
    ("How do I delete my account permanently?", "I want my account removed for good, how do I do that?"),
    ("The battery drains in two hours even when idle.", "Even on standby the battery is empty after about two hours."),
    ("Items bought on sale can only be exchanged, not refunded.", "Sale purchases are eligible for exchange but not for a refund."),
]

SAME_TOPIC = [
    ("How do I reset my password?", "How do I change my username?"),
    ("My package hasn't arrived yet and it's been two weeks.", "My package arrived but the box was empty."),
    ("Can I return an item after 30 days?", "Do I have to pay for return shipping?"),
    ("The app crashes every time I open the settings page.", "The app is very slow when loading my order history."),
    ("How long does a refund take to show up on my card?", "Can I get the refund as store credit instead?"),
    ("I was charged twice for the same order.", "I was charged the wrong price for my order."),
    ("Do you ship to Canada?", "How much does express shipping to Canada cost?"),
    ("How can I change the email address on my account?", "How can I add a second user to my account?"),
    ("The blender arrived with a cracked jug.", "The blender makes a burning smell after a minute."),
    ("Refunds are issued to the original payment method within 5 business days.",
     "Refunds for gift card purchases are issued as a new gift card."),
    ("Orders over $50 ship free within the US.", "Orders to Alaska and Hawaii take 7 to 10 business days."),
    ("You can cancel an order until it has shipped.", "Cancelled orders are refunded within 3 business days."),
    ("How do I cancel my subscription?", "How do I pause my subscription for a month?"),
    ("The discount code SAVE10 doesn't work at checkout.", "Can I use two discount codes on one order?"),
    ("I can't log in, it says my account is locked.", "I never received the verification email when signing up."),
    ("Where can I download my invoice?", "My invoice shows the wrong billing address."),
    ("Can I change the delivery address after ordering?", "Can I choose a delivery date for my order?"),
    ("The headphones only play sound in the left ear.", "The headphones won't pair with my laptop over Bluetooth."),
    ("Our support team is available Monday to Friday, 9am to 5pm.", "Support can be reached by phone or by chat."),
    ("Warranty claims need the original receipt.", "The warranty does not cover water damage."),
    ("How do I turn on two-factor authentication?", "I lost my phone and can't get my 2FA codes."),
    ("The tracking number says the label was created but nothing since.",
     "The tracking number belongs to a different carrier than the one shown."),
    ("I'd like to speak to a manager about my complaint.", "I want to leave positive feedback for the agent who helped me."),
    ("Gift cards cannot be exchanged for cash.", "Gift cards expire two years after purchase."),
    ("The printer shows error E04 and won't print.", "The printer prints blank pages after I replaced the ink."),
    ("Can I get an invoice with my company's VAT number?", "Do you offer bulk discounts for businesses?"),
    ("My order was delivered to the wrong address.", "My order was delivered but one item is missing."),
    ("How do I delete my account permanently?", "How do I download a copy of my personal data?"),
    ("The battery drains in two hours even when idle.", "The phone gets hot while charging."),
    ("Items bought on sale can only be exchanged, not refunded.", "Sale prices are not applied to items already purchased."),
]

UNRELATED = [
    ("How do I reset my password?", "The blender arrived with a cracked jug."),
    ("My package hasn't arrived yet and it's been two weeks.", "How do I turn on two-factor authentication?"),
    ("Can I return an item after 30 days?", "The printer shows error E04 and won't print."),
    ("The app crashes every time I open the settings page.", "Gift cards cannot be exchanged for cash."),
    ("How long does a refund take to show up on my card?", "The headphones only play sound in the left ear."),
    ("I was charged twice for the same order.", "Our support team is available Monday to Friday, 9am to 5pm."),
    ("Do you ship to Canada?", "The battery drains in two hours even when idle."),
    ("How can I change the email address on my account?", "Orders over $50 ship free within the US."),
    ("Warranty claims need the original receipt.", "I'd like to speak to a manager about my complaint."),
    ("Can I get an invoice with my company's VAT number?", "The app crashes every time I open the settings page."),
    ("The discount code SAVE10 doesn't work at checkout.", "How do I delete my account permanently?"),
    ("Where can I download my invoice?", "The headphones won't pair with my laptop over Bluetooth."),
    ("Items bought on sale can only be exchanged, not refunded.", "I lost my phone and can't get my 2FA codes."),
    ("The tracking number says the label was created but nothing since.", "How do I pause my subscription for a month?"),
    ("Refunds are issued to the original payment method within 5 business days.", "The phone gets hot while charging."),
]


def _summary(values: list[float]) -> dict[str, float]:
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {"n": len(values), "min": min(values), "p5": float(q[0]), "median": float(q[1]),
            "p95": float(q[2]), "max": max(values), "mean": statistics.fmean(values)}  # fmt: skip


def main() -> None:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "novelty.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from agent_sleep.selectors.embeddings import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    t1 = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - t1

    # "bare": the two texts as they are; "episode": each as a candidate's text (EpisodeCandidate.text)
    # with the same opening reply, the shape references and candidates have in a run.
    framings = {"bare": lambda t: t, "episode": lambda t: f"user: {t}\nassistant: {EPISODE_REPLY}"}
    sims: dict[str, dict[str, list[float]]] = {}
    rows: dict[str, list[dict[str, float]]] = {}
    for framing, frame in framings.items():
        sims[framing] = {}
        for kind, pairs in (("paraphrase", PARAPHRASE), ("same_topic", SAME_TOPIC), ("unrelated", UNRELATED)):
            a = embedder.embed([frame(p[0]) for p in pairs])
            b = embedder.embed([frame(p[1]) for p in pairs])
            sims[framing][kind] = [float(x) for x in (a * b).sum(1)]
        rows[framing] = [
            {"threshold": round(float(th), 2), **{f"{k}_dropped": sum(bool(x >= th) for x in v)
                                                   for k, v in sims[framing].items()}}
            for th in np.arange(0.70, 0.96, 0.05)
        ]  # fmt: skip

    base = ("Hi, I ordered a blender last week (order A-10023) and it arrived with a cracked jug. Can I get a "
            "replacement or a refund? I still have the box and the receipt. Thanks, Jane")  # fmt: skip
    texts = [f"{base} ({i})" for i in range(512)]
    embedder.embed(texts[:16])  # warm-up
    t = time.perf_counter()
    embedder.embed(texts)
    per_s = len(texts) / (time.perf_counter() - t)

    result = {
        "model": embedder.name, "threads": args.threads, "import_s": round(t1 - t0, 2), "load_s": round(load_s, 2),
        "embeddings_per_s": round(per_s, 1), "chars_per_text": round(statistics.fmean(map(len, texts)), 1),
        "similarity": {f: {k: {n: round(v, 3) for n, v in _summary(x).items()} for k, x in d.items()}
                       for f, d in sims.items()},
        "by_threshold": rows,
    }  # fmt: skip
    write_results(args.out, result)

    print(f"load {load_s:.2f} s (imports {t1 - t0:.2f} s); {per_s:.0f} embeddings/s on "
          f"{result['chars_per_text']:.0f}-char texts, {args.threads} thread(s)\n")  # fmt: skip
    for framing in framings:
        print(f"{framing} texts\n\n| pairs | n | min | p5 | median | p95 | max |\n|---|---|---|---|---|---|---|")
        for k, x in result["similarity"][framing].items():
            print(f"| {k} | {x['n']} | {x['min']:.3f} | {x['p5']:.3f} | {x['median']:.3f} | {x['p95']:.3f} | {x['max']:.3f} |")
        print("\n| threshold | paraphrases dropped | same-topic dropped | unrelated dropped |\n|---|---|---|---|")
        for r in rows[framing]:
            print(f"| {r['threshold']:.2f} | {r['paraphrase_dropped']}/{len(PARAPHRASE)} | "
                  f"{r['same_topic_dropped']}/{len(SAME_TOPIC)} | {r['unrelated_dropped']}/{len(UNRELATED)} |")  # fmt: skip
        print()

if __name__ == "__main__":
    main()
