"""Build the sft retain set: general chat prompts with the base model's own greedy replies.

``sft`` with ``retain_weight > 0`` keeps the adapted model's next-token distribution close to the
base model's on these conversations (a KL term, see ``agent_sleep.generators.sft``): outside the
agent's own prompt, the model should answer as it did before the night. This script writes
``agent_sleep/generators/data/retain.jsonl`` (one ``{"id", "kind", "messages"}`` per line).

The prompts are deliberately *not* the guard suites' (``evals/guards``): other kinds of request
(explanations, advice, short writing, definitions, notes from schools, kitchens and timetables
rather than help centres; format requests of other kinds than the guards' yes/no, repeat, first-word,
list and one-word items), written separately, and checked here to share no question with them.
``short_facts`` are one-line questions whose answer is a name, a word or a number (authors, planets,
rivers, currencies, body, food...): the answer slot that a night of new product facts pulls towards
invented names ("The capital of France is Londre." was a plain sft adapter's reply). None of them asks
for a capital city. ``world`` (capitals, continents, languages, currencies of countries the guards never
ask about) and ``numbers`` (sums, products, units in other wordings and numbers than the guards') cover
the other short-answer slots a night disturbed ("Denmark's capital is Brekkvale.", "Three times four
equals eight."): item-disjoint from the guards, which still measure whether *their* answers survive.
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
    "short_facts": [
        "Who wrote the play Romeo and Juliet?",
        "Who wrote Pride and Prejudice? Answer briefly.",
        "Which planet is known as the Red Planet?",
        "What is the largest planet in our solar system? Keep it short.",
        "Which planet is closest to the Sun?",
        "What is the chemical symbol for gold?",
        "What is the chemical symbol for sodium? One word, please.",
        "Which gas do plants release during photosynthesis?",
        "Who developed the theory of relativity?",
        "Who invented the telephone? Answer briefly.",
        "Who is known for discovering penicillin?",
        "What is the hardest natural substance?",
        "Which instrument has 88 keys?",
        "How many strings does a standard guitar have?",
        "How many players does a football (soccer) team have on the field?",
        "How many hours are in a day? Keep it short.",
        "How many legs does an insect have?",
        "How many wheels does a tricycle have?",
        "What is the boiling point of water in Fahrenheit?",
        "What is the freezing point of water in degrees Celsius?",
        "What is the main language spoken in Argentina?",
        "What language do people mainly speak in Austria?",
        "What is the currency of the United States?",
        "What is the currency used in Germany? Answer in a few words.",
        "In which country is the Taj Mahal?",
        "In which city is the Colosseum?",
        "In which country is Machu Picchu? Answer briefly.",
        "Which river flows through London?",
        "Which river runs through Cairo?",
        "What is the longest river in South America?",
        "On which continent is Kenya?",
        "On which continent is Brazil? Keep it short.",
        "What is the smallest continent?",
        "Which animal is known as the king of the jungle?",
        "What is a baby dog called?",
        "What is a baby cat called? One word.",
        "What do cows drink? Answer briefly.",
        "Which fruit is dried to make raisins?",
        "What is the main ingredient of guacamole?",
        "Which country is famous for inventing pizza?",
        "What is the primary ingredient in bread?",
        "Which vitamin do we get from sunlight?",
        "What organ do we use to breathe?",
        "How many bones are in the adult human body? Answer briefly.",
        "Which blood cells fight infection?",
        "What is the largest organ of the human body?",
        "Who painted the ceiling of the Sistine Chapel?",
        "Who composed the Fifth Symphony that begins with four famous notes?",
        "Which ship sank in 1912 after hitting an iceberg?",
        "In which year did World War II end?",
        "Who was the first president of the United States?",
        "Which metal is liquid at room temperature?",
        "What is the closest star to Earth?",
        "What shape has four equal sides and four right angles?",
        "What is the square root of 81?",
        "What do you call a word that means the opposite of another word?",
        "What is the plural of 'mouse'?",
        "What is the past tense of 'run'?",
        "Which season comes after winter?",
        "Which day comes after Friday?",
        "What is the last letter of the English alphabet?",
        "What colour do you get by mixing blue and yellow?",
        "What colour are emeralds? Answer in one short sentence.",
        "What do you call a person who flies an aeroplane?",
        "What do you call a person who repairs water pipes?",
        "Which sport is played at Wimbledon?",
        "In which sport do players score a touchdown?",
        "How many minutes are in an hour? Keep it short.",
        "What is the largest country in South America?",
        "What is the tallest animal in the world?",
        "What is the fastest land animal?",
        "Which bird is a symbol of peace?",
        "What do pandas mainly eat?",
        "Which sea creature has eight arms?",
        "What is the name of the galaxy we live in?",
        "What force keeps us on the ground?",
        "What is the centre of an atom called?",
        "Who wrote the Harry Potter books?",
        "What language has the most native speakers in the world?",
        "Which ocean lies between Africa and Australia?",
    ],
    "world": [
        "Which city is the capital of Tunisia?",
        "Name the capital city of Tanzania.",
        "What is Bolivia's capital? Keep it short.",
        "Tell me the capital of Paraguay, please.",
        "Which city is the capital of Mongolia?",
        "Name the capital city of Cambodia.",
        "What is Singapore's capital? Keep it short.",
        "Tell me the capital of Luxembourg, please.",
        "Which city is the capital of Belarus?",
        "Name the capital city of Cyprus.",
        "What is Malta's capital? Keep it short.",
        "Tell me the capital of Sri Lanka, please.",
        "Which city is the capital of Kazakhstan?",
        "Name the capital city of Georgia.",
        "What is Armenia's capital? Keep it short.",
        "Tell me the capital of Albania, please.",
        "Which city is the capital of Slovenia?",
        "Name the capital city of Panama.",
        "What is Costa Rica's capital? Keep it short.",
        "Tell me the capital of Honduras, please.",
        "Which city is the capital of Guatemala?",
        "Name the capital city of Zambia.",
        "What is Angola's capital? Keep it short.",
        "Tell me the capital of Mozambique, please.",
        "Which city is the capital of Botswana?",
        "Name the capital city of Namibia.",
        "What is Madagascar's capital? Keep it short.",
        "Tell me the capital of Sudan, please.",
        "Which city is the capital of Mali?",
        "Name the capital city of Cameroon.",
        "What is Rwanda's capital? Keep it short.",
        "Tell me the capital of Oman, please.",
        "Which city is the capital of Kuwait?",
        "Name the capital city of Bhutan.",
        "On which continent is Tunisia?",
        "On which continent is Paraguay?",
        "On which continent is Singapore?",
        "On which continent is Cyprus?",
        "On which continent is Kazakhstan?",
        "On which continent is Albania?",
        "On which continent is Costa Rica?",
        "On which continent is Zambia?",
        "On which continent is Botswana?",
        "On which continent is Sudan?",
        "On which continent is Rwanda?",
        "On which continent is Bhutan?",
        "What language do most people speak in France? Answer briefly.",
        "What language do most people speak in Germany? Answer briefly.",
        "What language do most people speak in Italy? Answer briefly.",
        "What language do most people speak in Russia? Answer briefly.",
        "What language do most people speak in China? Answer briefly.",
        "What language do most people speak in Portugal? Answer briefly.",
        "What language do most people speak in Greece? Answer briefly.",
        "What language do most people speak in Sweden? Answer briefly.",
        "What language do most people speak in Turkey? Answer briefly.",
        "What language do most people speak in Poland? Answer briefly.",
        "What language do most people speak in the Netherlands? Answer briefly.",
        "What language do most people speak in Chile? Answer briefly.",
        "What currency is used in the United States?",
        "What currency is used in India?",
        "What currency is used in China?",
        "What currency is used in Switzerland?",
        "What currency is used in Russia?",
        "What currency is used in Mexico?",
        "What currency is used in South Africa?",
        "What currency is used in Sweden?",
    ],
    "numbers": [
        "What is 14 plus 9?",
        "What is 23 plus 18?",
        "What is 7 plus 16?",
        "What is 35 plus 40?",
        "What is 120 plus 80?",
        "What is 6 plus 27?",
        "Add 11 and 4. Just the result.",
        "Add 19 and 19. Just the result.",
        "Add 250 and 125. Just the result.",
        "Add 8 and 13. Just the result.",
        "What is 30 minus 8?",
        "What is 100 minus 45?",
        "What is 17 minus 9?",
        "What is 64 minus 32?",
        "What is 50 minus 15?",
        "What is 9 times 6?",
        "What is 7 times 8?",
        "What is 12 times 5?",
        "What is 11 times 11?",
        "What is 4 times 25?",
        "What is 3 times 9?",
        "What is 36 divided by 6?",
        "What is 100 divided by 4?",
        "What is 81 divided by 9?",
        "What is 56 divided by 7?",
        "What is half of 50?",
        "What is double 15?",
        "What is 10 percent of 200?",
        "What is 3 squared?",
        "How many weeks are in a year?",
        "How many centimetres are in a metre?",
        "How many grams are in a kilogram?",
        "How many hours are in a week? Keep it short.",
        "How many days are in a leap year?",
        "How many minutes are in a day?",
        "How many legs does a spider have?",
        "How many sides does a square have?",
        "How many sides does an octagon have?",
        "How many players are in a basketball team on court?",
        "How many planets are in our solar system?",
        "How many letters are in the English alphabet?",
        "How many zeros are in one million?",
        "How many cents make a dollar?",
        "How many decades are in a century?",
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
