"""Build the sft retain set: general chat prompts with the base model's own greedy replies.

``sft`` with ``retain_weight > 0`` keeps the adapted model's next-token distribution close to the
base model's on these conversations (a KL term, see ``agent_sleep.generators.sft``): outside the
agent's own prompt, the model should answer as it did before the night. This script writes
``agent_sleep/generators/data/retain.jsonl`` (one ``{"id", "kind", "messages"}`` per line).

The prompts are deliberately *not* the guard suites' (``evals/guards``): other kinds of request
(explanations, advice, short writing, definitions, notes from schools, kitchens and timetables
rather than help centres; format requests of other kinds than the guards' yes/no, repeat, first-word,
list and one-word items), written separately, and checked here to share no question with them.
The replies are the base model's, so the KL is taken along text the model itself would write.

To run:  PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python pipelines/sft/build_retain.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "agent_sleep" / "generators" / "data" / "retain.jsonl"

PROMPTS: dict[str, list[str]] = {
    "explain": [
        "Explain in two sentences why the sky looks blue.",
        "Why do leaves change colour in autumn? Keep it short.",
        "What does a thermometer measure?",
        "How does a bicycle stay upright when it moves? Answer briefly.",
        "Explain what a noun is to a child.",
        "Why do we have seasons on Earth?",
        "What is the difference between weather and climate?",
        "How do bees make honey? Two sentences, please.",
        "What is photosynthesis, in simple words?",
        "Why does ice float on water?",
        "What does a compass do?",
        "Explain what recycling means.",
    ],
    "define": [
        "Define the word 'generous'.",
        "What does 'ancient' mean?",
        "Give a short definition of a volcano.",
        "What is a synonym for 'happy'?",
        "What is an island?",
        "What does the word 'fragile' mean?",
        "What is a library?",
        "Give the opposite of 'cold'.",
        "What is a desert?",
        "What does 'punctual' mean?",
    ],
    "advice": [
        "Give me one tip to sleep better.",
        "How can I remember new words in a foreign language?",
        "What should I pack for a day at the beach?",
        "Suggest a healthy breakfast.",
        "How can I stay focused while studying?",
        "What is a good way to start learning to cook?",
        "Give one tip for saving money.",
        "How do I keep a houseplant alive?",
        "What should I do before a job interview?",
        "Suggest a simple exercise I can do at home.",
    ],
    "write": [
        "Write a one-sentence birthday wish for a friend.",
        "Write a short thank-you note to a teacher.",
        "Write a two-line poem about rain.",
        "Write a sentence that uses the word 'journey'.",
        "Write a friendly greeting for a new neighbour.",
        "Describe a sunset in one sentence.",
        "Write a short invitation to a picnic on Saturday.",
        "Write a one-sentence story about a lost key.",
        "Write a polite sentence asking someone to close the door.",
        "Describe a cat in three words.",
    ],
    "knowledge": [
        "Who wrote 'Romeo and Juliet'?",
        "What is the largest ocean on Earth?",
        "How many legs does a spider have?",
        "What gas do plants take in from the air?",
        "Which planet is known as the Red Planet?",
        "What is the boiling point of water in Celsius?",
        "What is the main language spoken in Brazil?",
        "How many continents are there?",
        "What is the tallest animal in the world?",
        "What instrument has black and white keys?",
        "What do caterpillars turn into?",
        "Which season comes after winter?",
    ],
    "transform": [
        "Make this sentence more formal: 'Hey, can you send me the file?'",
        "Turn this into a question: 'The shop opens at nine.'",
        "Put these words in alphabetical order: pear, apple, mango.",
        "Rewrite in the past tense: 'I walk to school.'",
        "Shorten this sentence: 'At this point in time we are not able to come.'",
        "Correct the spelling: 'I recieved the pakage yesterday.'",
        "Translate 'thank you' into French.",
        "Count the words in: 'The quick brown fox jumps.'",
        "Make this friendlier: 'Your request is denied.'",
        "Summarise in one sentence: 'The meeting was moved from Monday to Wednesday because the room was booked.'",
    ],
    "format": [
        "Reply in capital letters: what do cows drink?",
        "Answer with a single number: how many fingers are on one hand?",
        "Say only OK.",
        "Reply with exactly two words: describe the sea.",
        "Answer in one word: what colour is snow?",
        "Give your answer as a number only: what is ten minus four?",
        "Write the word 'apple' backwards, nothing else.",
        "Answer true or false: the Sun is a star.",
        "Reply with only the letter A, B or C: which is a fruit? A) chair B) banana C) road",
        "Answer in at most five words: why do we sleep?",
        "Reply with a single emoji-free word: the opposite of 'up'.",
        "Respond only with the name of the month that comes after March.",
        "Give just the number: how many wheels does a bicycle have?",
        "Answer in lowercase letters only: what is the largest planet?",
    ],
    "context": [
        "School notice: The science fair starts at 10 am in the gym.\nWhere is the science fair?",
        "Recipe note: Bake the bread for 35 minutes at 200 degrees.\nHow long should the bread bake?",
        "Timetable: The last bus to Millbrook leaves at 22:40.\nWhen does the last bus leave?",
        "Club rules: Members may bring one guest per visit.\nHow many guests can a member bring?",
        "Museum sign: Photography without flash is allowed.\nCan I take photos in the museum?",
        "Garden tip: Water tomatoes twice a week in summer.\nHow often should I water tomatoes in summer?",
        "Class schedule: Art is on Tuesdays and music on Fridays.\nWhich day is music?",
        "Pool notice: Lanes 1 and 2 are reserved for swimming lessons.\nWhich lanes are reserved?",
        "Concert flyer: Doors open at 7 pm, the show starts at 8 pm.\nWhen does the show start?",
        "Camp letter: Bring a sleeping bag and a torch.\nWhat should I bring to camp?",
    ],
}


def main() -> int:
    import torch
    from langchain_core.messages import HumanMessage

    from agent_sleep.evaluation.suites import guard_suites
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.runtime.chat_model import ChatLocalModel

    guard_questions = {i.question.strip().lower() for s in guard_suites() for i in s.items}
    clash = [p for ps in PROMPTS.values() for p in ps if p.strip().lower() in guard_questions]
    if clash:
        raise SystemExit(f"retain prompts repeat guard questions: {clash}")
    torch.set_num_threads(1)
    handle = load_base_model()
    chat = ChatLocalModel(handle=handle, max_new_tokens=32)
    built = {}  # replies already in the file, by prompt: a rebuild only asks for new prompts
    if OUT.exists():
        for line in OUT.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            built[row["messages"][0]["content"]] = row["messages"][1]["content"]
    rows = []
    for kind, prompts in PROMPTS.items():
        for n, prompt in enumerate(prompts):
            reply = built.get(prompt) or str(chat.invoke([HumanMessage(prompt)]).content).strip()
            if not reply:
                continue
            rows.append({"id": f"{kind}-{n:02d}", "kind": kind,
                         "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]})
            print(f"{rows[-1]['id']}: {reply[:70]!r}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} conversations to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
