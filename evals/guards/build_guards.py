"""Build the guard suites: template candidates, kept only where the base model (no adapter) is right.

To run:  PYTHONPATH=. .venv/bin/python evals/guards/build_guards.py [--threads 1] [--batch-size 8]
         (--candidates-only writes evals/guards/candidates/*.jsonl and stops; --limit N tries N per category;
         --work DIR keeps the lm-eval runs with every reply)

Candidates are deterministic (fixed tables and templates, no randomness) in three categories:
``general`` (capitals, arithmetic, colours, animals, units, common facts), ``instructions`` (reply
with only a word, yes/no, a number only, repeat a sentence, three comma-separated items, capitals,
start with a word) and ``helpdesk`` (a note from a shop's help centre and a customer's question
whose answer is in the note). Each is scored by the base model through
:class:`agent_sleep.evaluation.lm_eval.LmEvalEvaluator` twice, with two batch sizes (padding
changes the arithmetic a little), and an item ships only if both runs got it right, and
unambiguously (:func:`unambiguous`: a colour answer naming no rival colour, a list that does not
echo the instruction). Writes
``evals/guards/{general,helpdesk,instructions}.jsonl`` and ``evals/guards/build.json`` (counts,
timings, command); the README quotes them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent_sleep.evaluation.suites import Suite, SuiteItem  # noqa: E402

HERE = Path(__file__).resolve().parent
BRIEF = " Answer in one short sentence."
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten",
         12: "twelve", 14: "fourteen", 24: "twenty-four", 29: "twenty-nine", 30: "thirty", 52: "fifty-two",
         60: "sixty", 90: "ninety", 100: "one hundred", 365: "three hundred sixty-five"}  # fmt: skip


def _num(n: int) -> tuple[str, tuple[str, ...]]:
    """A number as answer plus aliases (its word, and 1,000-style digits)."""
    aliases = [WORDS[n]] if n in WORDS else []
    if n >= 1000:
        aliases.append(f"{n:,}")
    return str(n), tuple(aliases)


# ---------------------------------------------------------------- general knowledge

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("the United Kingdom", "London"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("South Korea", "Seoul"), ("Thailand", "Bangkok"),
    ("India", "New Delhi"), ("Turkey", "Ankara"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Venezuela", "Caracas"), ("the Philippines", "Manila"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Switzerland", "Bern"), ("Colombia", "Bogotá"), ("Nigeria", "Abuja"), ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"), ("Morocco", "Rabat"),
    ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Malaysia", "Kuala Lumpur"), ("New Zealand", "Wellington"),
    ("Brazil", "Brasília"), ("Saudi Arabia", "Riyadh"), ("Lebanon", "Beirut"), ("Syria", "Damascus"),
    ("Afghanistan", "Kabul"), ("Nepal", "Kathmandu"), ("Jamaica", "Kingston"), ("Iceland", "Reykjavik"),
    ("Croatia", "Zagreb"), ("Serbia", "Belgrade"), ("Bulgaria", "Sofia"), ("Slovakia", "Bratislava"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Uruguay", "Montevideo"),
    ("Ecuador", "Quito"),
    ("Senegal", "Dakar"), ("Uganda", "Kampala"), ("Zimbabwe", "Harare"), ("North Korea", "Pyongyang"),
    ("Taiwan", "Taipei"), ("Qatar", "Doha"), ("Jordan", "Amman"), ("Libya", "Tripoli"), ("Algeria", "Algiers"),
]  # fmt: skip
ALIASES = {"Bogotá": ("Bogota",), "Kyiv": ("Kiev",), "New Delhi": ("Delhi",), "Bern": ("Berne",),
           "Brasília": ("Brasilia",), "Reykjavik": ("Reykjavík",)}  # fmt: skip

COLOURS = [
    ("a ripe banana", "yellow"), ("fresh grass", "green"), ("the sky on a clear day", "blue"), ("fresh snow", "white"),
    ("coal", "black"), ("a ripe strawberry", "red"), ("a ripe tomato", "red"), ("a lemon", "yellow"),
    ("a carrot", "orange"), ("a pumpkin", "orange"), ("milk", "white"), ("milk chocolate", "brown"),
    ("a fire truck", "red"), ("an emerald", "green"), ("a crow", "black"), ("a lime", "green"),
    ("a polar bear's fur", "white"), ("the sea on a sunny day", "blue"), ("a ripe cherry", "red"),
    ("a sunflower's petals", "yellow"), ("a school bus in the United States", "yellow"), ("a frog", "green"),
    ("a ripe plum", "purple"), ("an eggplant", "purple"), ("a flamingo", "pink"), ("charcoal", "black"),
    ("a cucumber's skin", "green"), ("the yolk of an egg", "yellow"), ("a pine tree's needles", "green"),
    ("a ladybird's wings", "red"), ("tree bark", "brown"), ("a cloud on a sunny day", "white"),
]  # fmt: skip

ANIMALS = [
    ("How many legs does a spider have?", 8), ("How many legs does a dog have?", 4),
    ("How many legs does a bird have?", 2), ("How many legs does an insect have?", 6),
    ("How many legs does a cow have?", 4), ("How many legs does a chicken have?", 2),
    ("How many legs does an octopus have?", 8), ("How many legs does a horse have?", 4),
]  # fmt: skip
ANIMAL_FACTS = [
    ("Which animal is known as the king of the jungle?", "lion", ()),
    ("What do bees make?", "honey", ()),
    ("Which African animal has a very long neck?", "giraffe", ()),
    ("What is a baby dog called?", "puppy", ("pup",)),
    ("What is a baby cat called?", "kitten", ()),
    ("What is the largest animal on Earth?", "blue whale", ("whale",)),
    ("Which bird is a symbol of peace?", "dove", ()),
    ("Which animal has black and white stripes and looks like a horse?", "zebra", ()),
    ("What is the fastest land animal?", "cheetah", ()),
    ("Which animal carries its shell on its back and moves very slowly?", "snail", ("turtle", "tortoise")),
    ("Which animal is famous for saying 'meow'?", "cat", ()),
    ("Which animal barks?", "dog", ()),
    ("What do caterpillars turn into?", "butterfly", ("butterflies", "moth")),
    ("What animal lays eggs and says 'cluck'?", "chicken", ("hen",)),
    ("Which large grey animal has a trunk?", "elephant", ()),
    ("Which black and white bear eats bamboo?", "panda", ()),
    ("Which animal hops and carries its baby in a pouch?", "kangaroo", ()),
    ("Which animal gives us wool?", "sheep", ()),
    ("Which animal has a hump and lives in the desert?", "camel", ()),
    ("Which bird cannot fly and lives in Antarctica?", "penguin", ()),
    ("What is a baby cow called?", "calf", ()),
    ("What is a baby sheep called?", "lamb", ()),
    ("Which animal is known for building dams in rivers?", "beaver", ()),
    ("What do you call a group of wolves?", "pack", ()),
    ("Which insect makes a web?", "spider", ()),
    ("Which animal has eight arms and lives in the sea?", "octopus", ()),
    ("Which farm animal says 'oink'?", "pig", ()),
    ("Which reptile has a hard shell and can live in water?", "turtle", ("tortoise",)),
    ("What is the largest cat in the world?", "tiger", ()),
    ("Which animal is known for changing its colour to match its surroundings?", "chameleon", ()),
]  # fmt: skip

UNITS = [
    ("How many centimetres are in a metre?", 100), ("How many minutes are in an hour?", 60),
    ("How many seconds are in a minute?", 60), ("How many hours are in a day?", 24),
    ("How many days are in a week?", 7), ("How many months are in a year?", 12),
    ("How many grams are in a kilogram?", 1000), ("How many metres are in a kilometre?", 1000),
    ("How many millimetres are in a centimetre?", 10), ("How many days are in a leap year?", 366),
    ("How many weeks are in a year?", 52), ("How many years are in a century?", 100),
    ("How many years are in a decade?", 10), ("How many inches are in a foot?", 12),
    ("How many days are in a normal year?", 365), ("How many millilitres are in a litre?", 1000),
    ("How many days are in February in a leap year?", 29), ("How many sides does a triangle have?", 3),
    ("How many sides does a square have?", 4), ("How many sides does a hexagon have?", 6),
    ("How many continents are there on Earth?", 7), ("How many days are in the month of April?", 30),
]  # fmt: skip

FACTS = [
    ("What is the largest planet in our solar system?", "Jupiter", ()),
    ("Which planet do we live on?", "Earth", ()),
    ("What is frozen water called?", "ice", ()),
    ("Which gas do humans need to breathe to live?", "oxygen", ()),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", ()),
    ("Who wrote Romeo and Juliet?", "Shakespeare", ()),
    ("What is the star at the centre of our solar system called?", "Sun", ()),
    ("What is the largest ocean on Earth?", "Pacific", ()),
    ("What is the opposite of hot?", "cold", ()),
    ("What is the opposite of up?", "down", ()),
    ("What is the opposite of day?", "night", ()),
    ("What is the chemical formula H2O better known as?", "water", ()),
    ("What is the tallest mountain in the world?", "Everest", ()),
    ("What is the longest river in Africa?", "Nile", ()),
    ("Which season comes after winter?", "spring", ()),
    ("Which season comes after summer?", "autumn", ("fall",)),
    ("Which day comes after Monday?", "Tuesday", ()),
    ("Which day comes before Sunday?", "Saturday", ()),
    ("Which month comes after January?", "February", ()),
    ("Which month comes after November?", "December", ()),
    ("What is the first month of the year?", "January", ()),
    ("Which planet is known as the Red Planet?", "Mars", ()),
    ("What do we call the natural satellite that orbits the Earth?", "Moon", ()),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ("da Vinci", "Leonardo")),
    ("What is the main language spoken in Brazil?", "Portuguese", ()),
    ("What is the main language spoken in Mexico?", "Spanish", ()),
    ("In which country are the pyramids of Giza?", "Egypt", ()),
    ("In which city is the Eiffel Tower?", "Paris", ()),
    ("What is the capital city of the United States?", "Washington", ()),
    ("What do you call a person who treats sick people?", "doctor", ("physician",)),
    ("What do you call a person who teaches students at a school?", "teacher", ()),
    ("Which organ pumps blood around the body?", "heart", ()),
    ("What do plants take in from the air to make food?", "carbon dioxide", ("CO2",)),
    ("What is the hardest natural substance?", "diamond", ()),
    ("Which metal is liquid at room temperature?", "mercury", ()),
    ("How many players are on a soccer team on the field?", "11", ("eleven",)),
    ("What is the largest desert in Africa?", "Sahara", ()),
    ("Which country is home to the kangaroo?", "Australia", ()),
    ("Which instrument has black and white keys?", "piano", ()),
    ("What do you call a house made of ice blocks?", "igloo", ()),
    ("What is the freezing point of water in degrees Celsius?", "0", ("zero",)),
    ("How do you say 'thank you' in Spanish?", "gracias", ()),
    ("How do you say 'hello' in French?", "bonjour", ("salut",)),
    ("Which planet is closest to the Sun?", "Mercury", ()),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ("Armstrong",)),
    ("Which country gave the Statue of Liberty to the United States?", "France", ()),
    ("What is the main ingredient of guacamole?", "avocado", ()),
    ("What do you use to write on a blackboard?", "chalk", ()),
    ("Which part of the plant is usually under the ground?", "root", ("roots",)),
    ("What is the currency of Japan?", "yen", ()),
    ("What is the currency of the United Kingdom?", "pound", ("pounds", "sterling")),
    ("Which sport is played at Wimbledon?", "tennis", ()),
    ("What is the largest country in the world by area?", "Russia", ()),
    ("What is the name of the galaxy we live in?", "Milky Way", ()),
    ("Which vitamin do we get from sunlight?", "vitamin D", ("D",)),
    ("Which gas do plants release during photosynthesis?", "oxygen", ()),
    ("What is the capital of the state of California?", "Sacramento", ()),
]  # fmt: skip

ARITHMETIC = [("+", 3, 6), ("+", 8, 5), ("+", 10, 7), ("+", 13, 4), ("+", 21, 12), ("+", 40, 50), ("+", 15, 15),
              ("+", 9, 8), ("+", 30, 6), ("+", 100, 200), ("+", 16, 3), ("+", 5, 5), ("+", 18, 2), ("+", 6, 8),
              ("*", 2, 5), ("*", 3, 3), ("*", 4, 4), ("*", 5, 5), ("*", 2, 9), ("-", 30, 12), ("-", 14, 5),
              ("-", 12, 7), ("-", 40, 15), ("/", 20, 4), ("/", 30, 5), ("+", 2, 3), ("+", 4, 5), ("+", 7, 8),
              ("+", 6, 7), ("+", 9, 9), ("+", 12, 15), ("+", 20, 30),
              ("+", 11, 11), ("+", 25, 25), ("+", 14, 6), ("*", 3, 4), ("*", 5, 6), ("*", 7, 8), ("*", 9, 9),
              ("*", 6, 6), ("*", 10, 10), ("*", 12, 2), ("*", 4, 8), ("-", 10, 3), ("-", 15, 6), ("-", 20, 8),
              ("-", 9, 5), ("-", 100, 1), ("-", 50, 20), ("/", 10, 2), ("/", 12, 4), ("/", 72, 9), ("/", 100, 4)]
OPS = {"+": ("plus", lambda a, b: a + b), "*": ("times", lambda a, b: a * b),
       "-": ("minus", lambda a, b: a - b), "/": ("divided by", lambda a, b: a // b)}  # fmt: skip


def general() -> list[SuiteItem]:
    items: list[SuiteItem] = []

    def add(kind: str, question: str, answer: str, aliases: tuple[str, ...] = ()) -> None:
        items.append(SuiteItem(id=f"general-{len(items) + 1:03d}", kind=f"general.{kind}", question=question + BRIEF,
                               answer=answer, aliases=aliases))  # fmt: skip

    for country, city in CAPITALS:
        add("capitals", f"What is the capital of {country}?", city, ALIASES.get(city, ()))
    for op, a, b in ARITHMETIC:
        word, fn = OPS[op]
        add("arithmetic", f"What is {a} {word} {b}?", *_num(fn(a, b)))
    for thing, colour in COLOURS:
        add("colours", f"What colour is {thing}?", colour)
    for question, n in ANIMALS:
        add("animals", question, *_num(n))
    for question, answer, aliases in ANIMAL_FACTS:
        add("animals", question, answer, aliases)
    for question, n in UNITS:
        add("units", question, *_num(n))
    for question, answer, aliases in FACTS:
        add("facts", question, answer, aliases)
    return items


# ---------------------------------------------------------------- instruction following

ONLY_WORDS = ["apple", "river", "hello", "purple", "table", "window", "garden", "yellow", "music", "ocean", "pencil",
              "orange", "tiger", "summer", "coffee", "planet"]  # fmt: skip
YES_NO = [
    ("Is fire hot?", "yes"), ("Is ice cold?", "yes"), ("Do fish live in water?", "yes"), ("Can dogs fly?", "no"),
    ("Is 10 greater than 3?", "yes"), ("Is 2 greater than 9?", "no"), ("Is Paris in France?", "yes"),
    ("Is the Pacific an ocean?", "yes"), ("Do cats have wings?", "no"), ("Is snow white?", "yes"),
    ("Is a tomato a vehicle?", "no"), ("Is water wet?", "yes"), ("Do birds have feathers?", "yes"),
    ("Is the Moon made of cheese?", "no"), ("Can a fish climb a tree?", "no"), ("Is Tokyo in Japan?", "yes"),
    ("Does a week have seven days?", "yes"), ("Is London the capital of Spain?", "no"),
    ("Is the sun hot?", "yes"), ("Is a cat an animal?", "yes"), ("Is a car a fruit?", "no"),
    ("Do humans need water to live?", "yes"), ("Is 5 less than 1?", "no"), ("Is grass green?", "yes"),
    ("Can penguins fly?", "no"), ("Is Berlin in Germany?", "yes"), ("Is a whale a fish?", "no"),
    ("Is an apple a fruit?", "yes"), ("Does ice melt when it gets warm?", "yes"), ("Is the ocean salty?", "yes"),
    ("Can a rock swim?", "no"), ("Is 100 more than 10?", "yes"),
    ("Is Rome in Italy?", "yes"), ("Is a banana blue?", "no"), ("Do spiders have eight legs?", "yes"),
    ("Is milk white?", "yes"), ("Can cars talk?", "no"), ("Is the Earth round?", "yes"), ("Is Madrid in France?", "no"),
    ("Do trees have leaves?", "yes"), ("Is 7 an even number?", "no"), ("Is Monday a day of the week?", "yes"),
    ("Is January a month?", "yes"), ("Do dogs bark?", "yes"), ("Is the sea dry?", "no"), ("Can elephants fly?", "no"),
    ("Is gold a metal?", "yes"), ("Is a piano a musical instrument?", "yes"), ("Does the sun rise in the east?", "yes"),
    ("Is a chair alive?", "no"), ("Do cows give milk?", "yes"), ("Is Canada in Africa?", "no"),
]  # fmt: skip
NUMBER_ONLY = [("How many legs does a cat have?", 4), ("How many days are in a week?", 7),
               ("What is 3 plus 4?", 7), ("How many months are in a year?", 12), ("What is 5 times 2?", 10),
               ("How many wheels does a bicycle have?", 2), ("What is 9 minus 3?", 6),
               ("How many hours are in a day?", 24), ("How many sides does a triangle have?", 3),
               ("What is 8 plus 8?", 16)]  # fmt: skip
REPEAT = ["The cat sat on the mat.", "I like green apples.", "The train leaves at noon.",
          "Water is good for you.", "My dog likes to run.", "The sun is shining today.",
          "Please close the door.", "We went to the park.", "She reads a book every night.",
          "The shop opens at nine.", "Birds can fly.", "The red ball is under the table.", "I have two brothers.",
          "It is raining outside.", "The coffee is hot.", "Tom plays the guitar.", "The library is quiet.",
          "We eat dinner at seven.", "The baby is sleeping.", "My phone is on the desk.", "The moon is bright tonight.",
          "He walks to work every day.", "The flowers are blooming.", "Our team won the game.",
          "The bread is fresh.", "The door is open.", "I am learning to cook.", "The bus is late again.",
          "My sister lives in Madrid.", "The children are playing outside.", "This box is very heavy.",
          "The meeting starts at ten.", "I lost my blue umbrella.", "The soup needs more salt.",
          "We planted tomatoes in spring.", "The printer is out of paper.", "Lunch is ready.",
          "The river is very wide.", "He forgot his keys at home.", "The store closes at six."]  # fmt: skip
LISTS = ["colours", "fruits", "animals", "countries", "vegetables", "sports", "musical instruments",
         "days of the week", "fish", "flowers", "birds", "cities", "months", "drinks", "planets", "trees", "jobs",
         "vehicles"]  # fmt: skip
UPPER = ["cat", "house", "blue", "water", "friend", "paper", "light", "stone"]
START = [("Hello", "Greet me."), ("Sure", "Tell me one fact about the Moon."), ("Yes", "Do you like books?"),
         ("Thanks", "Thank me for my order."), ("Welcome", "Welcome me to the shop."),
         ("Okay", "Tell me the colour of grass."), ("Hi", "Say something friendly."),
         ("Certainly", "Tell me what 2 plus 2 is."), ("Dear", "Write a one-line note to a friend."),
         ("Today", "Describe the weather in one sentence."), ("Good", "Wish me a nice day."),
         ("Yes", "Can you help me?"), ("Sorry", "Apologise for a late reply."), ("Great", "React to good news."),
         ("Hello", "Say hi to a new customer."), ("Dear", "Write the first line of a letter to Sam."),
         ("Welcome", "Greet a visitor to our website."), ("Today", "Tell me what you plan to do today."),
         ("Thanks", "Reply to a customer who paid their bill."), ("Sure", "Agree to send me the invoice."),
         ("Hi", "Greet a friend."), ("Good", "Say good morning to the team.")]  # fmt: skip


def instructions() -> list[SuiteItem]:
    items: list[SuiteItem] = []

    def add(kind: str, question: str, answer: str, match: str, aliases: tuple[str, ...] = ()) -> None:
        items.append(SuiteItem(id=f"instructions-{len(items) + 1:03d}", kind=f"instructions.{kind}",
                               question=question, answer=answer, aliases=aliases,
                               match=match))  # type: ignore[arg-type]

    phrasings = ("Reply with only the word {w}.", "Say the word {w} and nothing else.",
                 "Type this word and nothing else: {w}")  # fmt: skip
    for i, word in enumerate(ONLY_WORDS):
        add("only_word", phrasings[i % 3].format(w=word), word, "exact")
    for question, answer in YES_NO:
        add("yes_no", f"{question} Answer with only yes or no.", rf"(?i)^\W*{answer}\b", "regex")
    for question, n in NUMBER_ONLY:
        add("number_only", f"{question} Reply with the number only, in digits.", rf"^\W*{n}\W*$", "regex")
    for sentence in REPEAT:
        add("repeat", f"Repeat this sentence exactly: {sentence}", sentence.rstrip("."), "contains")
    for things in LISTS:
        add("list_three", f"Name three {things}, separated by commas, on one line, with nothing else.",
            r"^[^,\n]{2,40},[^,\n]{2,40},[^,\n]{2,40}$", "regex")
    for word in UPPER:
        add("uppercase", f"Write the word {word} in capital letters and nothing else.",
            rf"^\W*{word.upper()}\W*$", "regex")
    for first, request in START:
        add("start_with", f"{request} Start your reply with the word '{first}'.", rf"(?i)^\W*{first}\b", "regex")
    return items


# ---------------------------------------------------------------- helpdesk

HELPDESK = [
    # (kind, note with {v}, customer question, values)
    ("returns", "Items can be returned within {v} days of delivery.",
     "How many days do I have to return my order?", [14, 30, 60, 90, 21, 45]),
    ("refunds", "Refunds are paid back to your card within {v} business days.",
     "How many business days until I get my refund?", [3, 5, 7, 10, 4, 6]),
    ("warranty", "Every laptop we sell has a {v}-year warranty.",
     "How many years of warranty does my laptop have?", [2, 3, 4, 5, 6, 10]),
    ("shipping", "Standard shipping costs ${v} per order.", "How much does standard shipping cost?",
     ["4.99", "5.99", "7.50", "9.95", "3.49", "6.25"]),
    ("free_shipping", "Orders over ${v} ship for free.", "How much do I need to spend to get free shipping?",
     [25, 35, 50, 75, 40, 60]),
    ("plans", "The Pro plan costs ${v} per month.", "How much is the Pro plan per month?", [12, 20, 29, 49, 15, 39]),
    ("order_number", "Your order number is {v}.", "What is my order number?",
     ["48213", "77190", "30562", "91847", "65031", "12978"]),
    ("tracking", "The tracking code for your parcel is {v}.", "What is my tracking code?",
     ["TRK4821", "ZX99120", "PKG5530", "SHP7714", "BX20417", "QL88302"]),
    ("email", "You can email our support team at {v}.", "What email address can I write to for support?",
     ["help@shopmail.com", "support@acme.com", "care@brightstore.com", "service@homegoods.com", "team@pixelshop.com",
      "hello@greenmart.com"]),
    ("phone", "Our customer service phone number is {v}.", "What number can I call for customer service?",
     ["555-0142", "555-0199", "555-0187", "555-0123", "555-0168", "555-0110"]),
    ("hours", "Our support desk opens at {v} every weekday.", "What time does the support desk open?",
     ["8am", "9am", "10am", "7am", "6am", "11am"]),
    ("chat_hours", "Live chat is available until {v} every day.", "Until what time is live chat available?",
     ["6pm", "8pm", "9pm", "10pm", "5pm", "7pm"]),
    ("city", "Our only physical store is in {v}.", "In which city is your store?",
     ["Denver", "Leeds", "Lyon", "Osaka", "Boston", "Munich"]),
    ("delivery", "Express delivery takes {v} days.", "How many days does express delivery take?", [1, 2, 3, 4, 5, 6]),
    ("password", "To reset your password, click the '{v}' link on the sign-in page.",
     "Which link do I click to reset my password?",
     ["Forgot password", "Reset password", "Need help", "Trouble signing in", "Lost password", "Change password"]),
    ("courier", "We ship all parcels with {v}.", "Which courier delivers my parcel?",
     ["DHL", "FedEx", "UPS", "Royal Mail", "DPD", "Evri"]),
    ("discount", "New customers get {v} percent off their first order with code WELCOME.",
     "How big is the discount for new customers, in percent?", [10, 15, 20, 25, 30, 5]),
    ("loyalty", "Members earn {v} points for every dollar they spend.", "How many points do members earn per dollar?",
     [2, 3, 4, 5, 10, 6]),
    ("exchange", "Exchanges are free within {v} days of purchase.", "Within how many days are exchanges free?",
     [7, 14, 21, 30, 45, 60]),
    ("gift_card", "Gift cards are valid for {v} months after purchase.", "For how many months is a gift card valid?",
     [6, 12, 18, 24, 36, 9]),
    ("app", "You can track your orders in our mobile app, {v}.", "What is the name of your mobile app?",
     ["ShopGo", "TrackIt", "Parcelly", "OrderNow", "Boxly", "Cartwise"]),
]  # fmt: skip
HELPDESK_FORM = "Help centre note: {note}\nQuestion: {question} Answer using the note."
HOURS = {f"{h}{m}": (f"{h} {m}", f"{h}:00", f"{h} {m[0]}.m", f"{h + 12}:00" if m == "pm" else f"{h:02d}:00")
         for h in range(1, 12) for m in ("am", "pm")}  # fmt: skip


def helpdesk() -> list[SuiteItem]:
    items: list[SuiteItem] = []
    for kind, note, question, values in HELPDESK:
        for value in values:
            answer, aliases = _num(value) if isinstance(value, int) else (str(value), HOURS.get(str(value), ()))
            if kind == "shipping":
                aliases = (f"{value} dollars",)
            text = HELPDESK_FORM.format(note=note.format(v=value), question=question)
            items.append(SuiteItem(id=f"helpdesk-{len(items) + 1:03d}", kind=f"helpdesk.{kind}", question=text,
                                   answer=answer, aliases=aliases))  # fmt: skip
    return items


COLOUR_WORDS = {"red", "green", "blue", "yellow", "white", "black", "orange", "brown", "purple", "pink", "grey", "gray"}


def unambiguous(item: SuiteItem, reply: str) -> bool:
    """Stricter than the scoring rule, for choosing guards: no rival colour named, no echoed list instruction."""
    text = reply.lower()
    if item.kind == "general.colours":
        return not (set(re.findall(r"[a-z]+", text)) & COLOUR_WORDS) - {item.answer}
    if item.kind == "instructions.list_three":
        return not any(w in text for w in ("separat", "comma", "nothing else"))
    return True


def candidates() -> dict[str, Suite]:
    suites = {"general": general(), "instructions": instructions(), "helpdesk": helpdesk()}
    for name, items in suites.items():  # a "contains" answer inside the question would be found by an echo
        for item in items:
            asked = item.question.lower().split("question:")[-1]  # helpdesk: the note holds the answer on purpose
            if item.match == "contains" and name != "instructions":
                assert not any(re.search(rf"(?<!\w){re.escape(r.lower())}(?!\w)", asked) for r in item.references), item
    return {name: Suite(name=f"guards_{name}", items=tuple(items)) for name, items in suites.items()}


def write_jsonl(path: Path, items: list[SuiteItem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(i.model_dump_json(exclude_defaults=True) + "\n" for i in items), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--second-batch-size", type=int, default=5, help="the check run's batch size (0: no check run)")
    parser.add_argument("--limit", type=int, default=None, help="try only this many candidates per category")
    parser.add_argument("--candidates-only", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the lm-eval runs (with every reply) here (default: a temp dir)")
    args = parser.parse_args(argv)

    suites = candidates()
    print({name: len(s.items) for name, s in suites.items()}, "candidates")
    if args.candidates_only:
        for name, suite in suites.items():
            write_jsonl(args.out / "candidates" / f"{name}.jsonl", list(suite.items))
        return 0

    import torch

    from agent_sleep.evaluation.lm_eval import LmEvalEvaluator, replies
    from agent_sleep.models.loader import load_base_model

    torch.set_num_threads(args.threads)
    handle = load_base_model()
    tried = {name: suite.sample(args.limit) for name, suite in suites.items()}
    todo = dict(tried)
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="build-guards-") as tmp_dir:
        tmp = args.work or tmp_dir
        # Pass 1 on every candidate; pass 2, with another batch size, on what pass 1 got right.
        for batch_size in [args.batch_size] + ([args.second_batch_size] if args.second_batch_size else []):
            evaluator = LmEvalEvaluator(handle, todo.values(), Path(tmp) / f"b{batch_size}", batch_size=batch_size)
            started = time.perf_counter()
            results = evaluator.evaluate_suites(())
            seconds = time.perf_counter() - started
            n = sum(r.samples for r in results.values())
            runs.append({"batch_size": batch_size, "items": n, "seconds": round(seconds, 1),
                         "seconds_per_item": round(seconds / n, 3)})  # fmt: skip
            print(runs[-1], flush=True)
            said = {item: reply for r in results.values() for item, reply in replies(r).items()}
            todo = {name: suite.model_copy(update={"items": tuple(
                        i for i in suite.items if results[suite.name].scores[i.id] == 1.0
                        and unambiguous(i, said[i.id]))})
                    for name, suite in todo.items()}  # fmt: skip
            if any(not s.items for s in todo.values()):
                raise SystemExit(f"a category kept no items: { {k: len(v.items) for k, v in todo.items()} }")

    report: dict[str, object] = {"command": "PYTHONPATH=. .venv/bin/python evals/guards/build_guards.py "
                                 + " ".join(argv if argv is not None else sys.argv[1:]),
                                 "model": handle.spec, "model_content_hash": handle.content_hash,
                                 "threads": args.threads, "runs": runs, "categories": {}}  # fmt: skip
    for name, suite in tried.items():
        items, kept = list(suite.items), list(todo[name].items)
        write_jsonl(args.out / f"{name}.jsonl", kept)
        per_kind = Counter(i.kind for i in items)
        kept_kind = Counter(i.kind for i in kept)
        report["categories"][name] = {  # type: ignore[index]
            "candidates": len(items), "kept": len(kept),
            "kinds": {k: {"candidates": per_kind[k], "kept": kept_kind[k]} for k in sorted(per_kind)},
        }  # fmt: skip
    (args.out / "build.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["categories"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
