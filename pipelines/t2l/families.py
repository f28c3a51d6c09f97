"""The behaviour families of the synthetic T2L tasks: how each renders an answer, how a reply is checked, and the
paraphrases that describe it.

A family is a function of (payload, parameter) -> reply text, its inverse parser (``extract``: the payload if the
reply follows the format, else None, so format compliance is checkable without knowing the right content), the
parameter values it takes, how a parameter reads in a description, and 16 paraphrase templates (``{p}`` = the
parameter's phrase). The last :data:`HELD_TEMPLATES` templates of every family are never used in training.
"qa" families reformat the plain answer of a question; "text" families are procedures on the user's phrase (checked
by exact match after case and space folding). Keywords, brackets and separators recur across families, so held-out
combinations and the held-out families (``tag``, ``join``) are composed of parts that training did see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.t2l.inputs import Item, number_words

__all__ = ["FAMILIES", "HELD_TEMPLATES", "Family"]

HELD_TEMPLATES = 4

Render = Callable[[str, str], str]
Extract = Callable[[str, str], str | None]


def _always(item: Item) -> bool:
    return True


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "qa" or "text"
    templates: tuple[str, ...]
    render: Render
    extract: Extract
    params: tuple[str, ...] = ("",)
    phrase: Callable[[str], str] = field(default=lambda p: p)
    accepts: Callable[[Item], bool] = _always

    def describe(self, index: int, param: str) -> str:
        return self.templates[index].replace("{p}", self.phrase(param))

    @property
    def train_templates(self) -> range:
        return range(max(0, len(self.templates) - HELD_TEMPLATES))

    @property
    def held_templates(self) -> range:
        return range(max(0, len(self.templates) - HELD_TEMPLATES), len(self.templates))


KEYWORDS = ["answer", "result", "note", "reply", "output", "verdict", "final", "response", "solution", "info",
            "fact", "guess"]  # fmt: skip
SIGNOFFS = ["Cheers!", "Thanks!", "Done.", "Over.", "Bye!", "Enjoy!", "Regards.", "Ciao!", "Good luck!", "Stay safe."]
BRACKETS = {"square brackets": ("[", "]"), "parentheses": ("(", ")"), "curly braces": ("{", "}"),
            "angle brackets": ("<", ">"), "double quotes": ('"', '"'), "single quotes": ("'", "'"),
            "backticks": ("`", "`"), "asterisks": ("*", "*")}  # fmt: skip
SEPARATORS = {"hyphens": "-", "dots": ".", "spaces": " ", "commas": ",", "slashes": "/", "underscores": "_",
              "plus signs": "+"}  # fmt: skip
TIMES = {"2": "twice", "3": "three times", "4": "four times"}
BANGS = {"1": "one exclamation mark", "2": "two exclamation marks", "3": "three exclamation marks"}
PATTERNS = ["The answer is {}.", "It is {}.", "My answer is {}.", "I think it is {}.", "That would be {}."]
BULLETS = {"-": "a dash", "*": "an asterisk", "+": "a plus sign", ">": "a greater-than sign", "•": "a bullet dot (•)"}


def _letters(s: str) -> bool:
    return any(c.isalpha() for c in s)


def _strip_prefix(text: str, prefix: str) -> str | None:
    return text[len(prefix) :] if text.startswith(prefix) and len(text) > len(prefix) else None


def _strip_suffix(text: str, suffix: str) -> str | None:
    return text[: -len(suffix)] if text.endswith(suffix) and len(text) > len(suffix) else None


def _json_value(text: str, key: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if isinstance(obj, dict) and list(obj) == [key] and isinstance(obj[key], (str, int, float)):
        return str(obj[key])
    return None


def _wrap_extract(text: str, name: str) -> str | None:
    left, right = BRACKETS[name]
    inner = _strip_suffix(_strip_prefix(text, left) or "", right)
    return inner if inner and inner.strip() == inner else None


def _repeat_extract(text: str, n: str) -> str | None:
    words, k = text.split(" "), int(n)
    if len(words) % k:
        return None
    w = len(words) // k
    chunks = {" ".join(words[i * w : (i + 1) * w]) for i in range(k)}
    return chunks.pop() if len(chunks) == 1 else None


def _spell_extract(text: str, name: str) -> str | None:
    parts = text.split(SEPARATORS[name])
    return "".join(parts) if len(parts) > 1 and all(len(p) == 1 for p in parts) else None


def _pattern_extract(text: str, pattern: str) -> str | None:
    head, tail = pattern.split("{}")
    inner = _strip_suffix(_strip_prefix(text, head) or "", tail)
    return inner if inner and "." not in inner else None


def _bang_extract(text: str, n: str) -> str | None:
    inner = _strip_suffix(text, "!" * int(n))
    return inner if inner and not inner.endswith("!") else None


_NUMBER_WORDS = {number_words(i) for i in range(100)} | {w for i in range(100) for w in number_words(i).split("-")}


def _tag_extract(text: str, key: str) -> str | None:
    m = re.fullmatch(rf"<{re.escape(key)}>(.+)</{re.escape(key)}>", text)
    return m.group(1) if m else None


def _signoff_extract(text: str, s: str) -> str | None:
    inner = _strip_suffix(text, f". {s}")
    return inner or None


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _text_family(name: str, templates: tuple[str, ...], fn: Callable[[list[str], str], str],
                 params: tuple[str, ...] = ("",), phrase: Callable[[str], str] = lambda p: p) -> Family:  # fmt: skip
    """A procedure on the user's phrase; compliance is exact match of the folded text (``extract`` returns it)."""
    return Family(name, "text", templates, lambda payload, p: fn(payload.split(), p),
                  lambda text, p: _fold(text), params, phrase)  # fmt: skip


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("prefix", "qa", (
        "Start every answer with '{p}'.", "Begin each reply with the word '{p}'.",
        "Always put '{p}' at the very start of your answer.", "Your response must open with '{p}'.",
        "Prefix the answer with '{p}'.", "Put '{p}' before the answer.",
        "Each answer should begin with '{p}' followed by the answer.", "Lead with '{p}' and then give the answer.",
        "Open every response with the label '{p}'.", "Write '{p}' first, then the answer.",
        "The first word of every reply is '{p}'.", "Answers start with '{p}'.",
        "Make sure your reply begins with '{p}'.", "Preface your answer with '{p}'.",
        "Kick off each answer with '{p}'.", "Type '{p}' at the beginning, then answer.",
    ), lambda a, p: f"{p} {a}", lambda t, p: _strip_prefix(t, f"{p} "),
        tuple(f"{k.capitalize()}:" for k in KEYWORDS)),
    Family("signoff", "qa", (
        "End every answer with '{p}'.", "Sign off each reply with '{p}'.", "Finish your response with '{p}'.",
        "Always close with '{p}'.", "Add '{p}' at the end of the answer.", "After the answer, write '{p}'.",
        "Every reply must end in '{p}'.", "Conclude each answer with the sign-off '{p}'.",
        "Give the answer, then say '{p}'.", "Put '{p}' after your answer.",
        "The last words of each reply are '{p}'.", "Append '{p}' to every answer.",
        "Wrap up each response with '{p}'.", "Close every answer by writing '{p}'.",
        "Let each answer finish with '{p}'.", "Tack '{p}' onto the end of your reply.",
    ), lambda a, p: f"{a}. {p}", _signoff_extract, tuple(SIGNOFFS)),
    Family("json", "qa", (
        "Reply in JSON with the answer under the key '{p}'.", "Return a JSON object whose only key is '{p}'.",
        'Answer as a JSON object like {"{p}": "..."}.', "Output JSON with a single field named '{p}'.",
        "Give your answer as JSON, using '{p}' as the key.", "Respond only with a JSON object that has the key '{p}'.",
        "Put the answer in a JSON dictionary under '{p}'.", "Answer in JSON format; the key must be '{p}'.",
        "Wrap the answer in JSON with the field '{p}'.", "Use JSON: one key, '{p}', holding the answer.",
        "Emit a JSON object mapping '{p}' to the answer.", "Reply with JSON where '{p}' is the answer's key.",
        "Encode your reply as JSON under the key '{p}'.", "Return the answer as the value of '{p}' in a JSON object.",
        "Structure the answer as JSON with key '{p}'.", "Send back JSON containing the answer at '{p}'.",
    ), lambda a, p: json.dumps({p: a}), _json_value, tuple(KEYWORDS)),
    Family("kv", "qa", (
        "Answer in the form {p}=answer.", "Reply as a key=value pair with the key '{p}'.",
        "Write '{p}=' followed by the answer.", "Format every answer as {p}=VALUE.",
        "Give the answer as an assignment to '{p}', like {p}=answer.", "Respond with {p}= and then the answer.",
        "Use key=value format; the key is '{p}'.", "Output a single line: {p}=<answer>.",
        "Put the answer right after '{p}='.", "Answer like a config line: {p}=answer.",
        "Each reply is {p}= plus the answer.", "Express the answer as the value of {p} in key=value form.",
        "Return '{p}=' immediately followed by your answer.", "Reply with an equals-sign pair whose key is '{p}'.",
        "Set {p} to the answer, written as {p}=answer.", "Write your answer in {p}=value style.",
    ), lambda a, p: f"{p}={a}", lambda t, p: _strip_prefix(t, f"{p}="), tuple(KEYWORDS)),
    Family("tag", "qa", (
        "Wrap the answer in an XML tag named '{p}'.", "Reply as <{p}>answer</{p}>.",
        "Put the answer between <{p}> and </{p}> tags.", "Enclose your answer in {p} XML tags.",
    ), lambda a, p: f"<{p}>{a}</{p}>", _tag_extract, tuple(KEYWORDS)),
    Family("wrap", "qa", (
        "Put the answer in {p}.", "Wrap every answer in {p}.", "Enclose the answer in {p}.",
        "Surround your reply with {p}.", "Always write the answer inside {p}.", "Place {p} around the answer.",
        "Your answer must be enclosed in {p}.", "Give the answer between {p}.",
        "Answer with the text wrapped in {p}.", "Mark the answer off with {p}.",
        "Format: the answer inside {p}, nothing else.", "Reply with just the answer, enclosed by {p}.",
        "Put {p} on both sides of the answer.", "Keep the whole answer within {p}.",
        "Show the answer surrounded by {p}.", "Frame your answer with {p}.",
    ), lambda a, p: BRACKETS[p][0] + a + BRACKETS[p][1], _wrap_extract, tuple(BRACKETS)),
    Family("upper", "qa", (
        "Answer in capital letters.", "Write the answer in all caps.", "Reply using only uppercase letters.",
        "Use upper case for the whole answer.", "Shout the answer in capitals.",
        "Every letter of the answer must be uppercase.", "Give the answer in ALL CAPS.",
        "Capitalize every letter of your reply.", "Respond in uppercase.", "Type the answer with caps lock on.",
        "No lowercase letters: answer in capitals.", "Make the answer fully uppercase.",
        "Write your reply entirely in block capitals.", "Only capital letters in the answer, please.",
        "Put the whole answer in upper case letters.", "Answer loudly, in all capital letters.",
    ), lambda a, p: a.upper(), lambda t, p: t if _letters(t) and t == t.upper() else None,
        accepts=lambda item: _letters(item.answer)),
    Family("lower", "qa", (
        "Answer in lowercase letters only.", "Write the answer in all lowercase.",
        "Do not use any capital letters in the answer.", "Reply using only small letters.",
        "Use lower case for the whole answer.", "Every letter of the answer must be lowercase.",
        "Give the answer without capitalization.", "Respond in lowercase.", "No uppercase letters in your reply.",
        "Make the answer fully lowercase.", "Type the answer entirely in small letters.",
        "Keep every letter of the reply lowercase.", "Write your reply with no capitals at all.",
        "Only lowercase letters in the answer, please.", "Put the whole answer in lower case.",
        "Answer in all small letters, even names.",
    ), lambda a, p: a.lower(), lambda t, p: t if _letters(t) and t == t.lower() else None,
        accepts=lambda item: item.answer != item.answer.lower()),
    Family("repeat", "qa", (
        "Say the answer {p}.", "Repeat the answer {p}, separated by spaces.", "Write the answer {p} in a row.",
        "Give the answer {p}.", "Reply with the answer repeated {p}.", "State your answer {p}, one after another.",
        "Answer {p} on one line.", "Echo the answer {p}.", "Output the answer {p} with spaces between.",
        "Write it {p}: the answer, repeated.", "Every reply is the answer said {p}.", "Repeat your answer {p}.",
        "Type the answer out {p}.", "Give me the answer {p} over.", "Say it {p}, back to back.",
        "Produce the answer {p} in a line.",
    ), lambda a, p: " ".join([a] * int(p)), _repeat_extract, tuple(TIMES), TIMES.__getitem__),
    Family("spell", "qa", (
        "Spell the answer letter by letter, separated by {p}.", "Write each letter of the answer with {p} between them.",
        "Split the answer into letters joined by {p}.", "Spell out the answer using {p} between letters.",
        "Give the answer one letter at a time, with {p} in between.", "Separate the letters of the answer with {p}.",
        "Answer by spelling it, letters separated by {p}.", "Put {p} between every letter of the answer.",
        "Spell the answer, joining the letters with {p}.",
        "Write the answer's letters individually, divided by {p}.", "Letter-by-letter answer, {p} between letters.",
        "Break the answer into single letters separated by {p}.",
        "Spell your reply out with {p} between each letter.", "Insert {p} between all letters of the answer.",
        "Give the spelling of the answer, letters split by {p}.", "List the letters of the answer with {p} between.",
    ), lambda a, p: SEPARATORS[p].join(a), _spell_extract, ("hyphens", "dots", "spaces", "commas", "slashes"),
        accepts=lambda item: item.answer.isalpha() and len(item.answer) <= 8),
    Family("first_letter", "qa", (
        "Answer with only the first letter of the answer.", "Reply with just the initial letter.",
        "Give only the first letter of your answer.", "Write a single letter: the answer's first.",
        "Respond with the first character of the answer only.", "Only say the first letter of the answer.",
        "Shorten the answer to its first letter.", "Output just the opening letter of the answer.",
        "Your reply is one letter: the first letter of the answer.", "Give the initial of the answer and nothing else.",
        "Answer with one letter, the answer's first.", "Return the first letter of the correct answer.",
        "Just type the letter the answer starts with.", "Reply with the answer's leading letter only.",
        "Tell me only which letter the answer begins with.", "Abbreviate the answer to its first letter.",
    ), lambda a, p: a[0], lambda t, p: t if len(t) == 1 and t.isalpha() else None,
        accepts=lambda item: item.answer[:1].isalpha()),
    Family("sentence", "qa", (
        "Answer in the form {p}", "Reply with a full sentence like {p}", "Use this pattern for every answer: {p}",
        "Put the answer into the sentence {p}", "Always answer with the sentence {p}, X being the answer.",
        "Phrase your reply as {p}", "Respond using the template {p}", "Your answer should read {p}",
        "Write the answer as {p}", "Fill in X in {p} and reply with that sentence.", "Format: {p}",
        "Answer with exactly {p} where X is the answer.", "Give your reply in the shape {p}",
        "Say the answer as the sentence {p}", "Make every reply look like {p}", "Follow this answer format: {p}",
    ), lambda a, p: p.format(a), _pattern_extract, tuple(PATTERNS), lambda p: "'" + p.format("X") + "'"),
    Family("bullet", "qa", (
        "Answer as a bullet point starting with {p}.", "Write the answer as a list item marked with {p}.",
        "Put {p} and a space before the answer, like a bullet.", "Format the answer as a single bullet using {p}.",
        "Reply with one bullet point; the bullet is {p}.", "Start the answer with {p} as a bullet marker.",
        "Give the answer as a list entry beginning with {p}.", "Use {p} as the bullet for your answer.",
        "Present the answer as a bulleted item with {p}.", "Answer in list form, marked by {p}.",
        "Make the answer one bullet point with {p} in front.", "Bullet the answer with {p}.",
        "List the answer as an item led by {p}.", "Show the answer as a bullet, using {p} as the marker.",
        "Turn the answer into a list item with {p}.", "Write {p}, a space, and then the answer, as a list.",
    ), lambda a, p: f"{p} {a}", lambda t, p: _strip_prefix(t, f"{p} "), tuple(BULLETS), BULLETS.__getitem__),
    Family("numword", "qa", (
        "Write numbers as words, not digits.", "Spell out the number in words.",
        "Answer with the number written in English words.", "Never use digits; write the number out.",
        "Give the numeric answer in words.", "Express the result in words instead of digits.",
        "Reply with the number spelled out.", "Use words for numbers, like 'seven' instead of 7.",
        "Write the answer in letters, not numerals.", "No digits allowed: spell the number.",
        "Say the number as a word.", "Convert the answer to English number words.",
        "Type the result out in words rather than figures.", "Answer using number words only.",
        "Write out the number the way you would say it.", "Put the answer in words, no numerals.",
    ), lambda a, p: number_words(int(a)),
        lambda t, p: t if t and all(w in _NUMBER_WORDS for w in t.lower().replace("-", " ").split()) else None,
        accepts=lambda item: item.answer.isdigit()),
    Family("exclaim", "qa", (
        "End the answer with {p}.", "Add {p} after the answer.", "Finish every reply with {p}.",
        "Answer excitedly, ending with {p}.", "Put {p} at the end of the answer.", "Close the answer with {p}.",
        "Give the answer followed by {p}.", "Every answer ends in {p}.", "Append {p} to your reply.",
        "Say the answer with {p} after it.", "Your answer must finish with {p}.", "Terminate the answer with {p}.",
        "Punctuate the answer with {p} at the end.", "Follow the answer immediately with {p}.",
        "Let the reply end with {p}.", "Tack {p} onto the answer.",
    ), lambda a, p: a + "!" * int(p), _bang_extract, tuple(BANGS), BANGS.__getitem__),
    _text_family("reverse", (
        "Reverse the order of the words in the user's message.",
        "Repeat the user's text with the words in reverse order.",
        "Write the words of the message backwards, last word first.",
        "Reply with the user's words in the opposite order.", "Flip the word order of the text you are given.",
        "Return the message with its words reversed.", "Read the user's words from last to first and write them.",
        "Output the input's words in reverse sequence.", "Say the user's sentence backwards, word by word.",
        "Reverse the words of whatever the user writes.", "Invert the word order of the user's message.",
        "Rewrite the text so the last word comes first and the first word last.",
        "Give back the user's words in reversed order.", "Turn the message around word by word.",
        "Write the given words from end to start.", "Echo the text with the word order reversed.",
    ), lambda w, p: " ".join(reversed(w))),
    _text_family("acronym", (
        "Reply with the first letter of each word of the user's message.",
        "Make an acronym from the user's words, in lowercase.",
        "Write the initials of the words in the message as one string.",
        "Join the first letters of all words the user wrote.", "Abbreviate the message to its words' first letters.",
        "Return only the initial letter of every word, run together.",
        "Take each word's first letter and write them together.",
        "Compress the text into the first letters of its words.", "Output the lowercase initials of the user's words.",
        "Give the acronym of the message.", "Turn the user's text into an acronym.",
        "String together the first letter of every word in the input.",
        "Form a word from the first letters of the user's words.", "Reply with the message's initials, no spaces.",
        "Write the first character of each word, nothing else.", "Spell the acronym of what the user wrote.",
    ), lambda w, p: "".join(x[0] for x in w)),
    _text_family("first_word", (
        "Reply with only the first word of the user's message.", "Return just the first word of the text.",
        "Write the opening word of the message and nothing else.", "Say only the first word the user wrote.",
        "Give back the message's first word.", "Output the initial word of the input.",
        "Keep the first word of the message and drop the rest.", "Answer with the user's first word.",
        "Echo only the first word of what you are given.", "Your reply is the first word of the user's text.",
        "Cut the message down to its first word.", "Respond with the word the message starts with.",
        "Just repeat the first word of the user's message.", "Only the message's opening word, please.",
        "Write the word that begins the user's text.", "Return the leading word of the input.",
    ), lambda w, p: w[0]),
    _text_family("last_word", (
        "Reply with only the last word of the user's message.", "Return just the final word of the text.",
        "Write the closing word of the message and nothing else.", "Say only the last word the user wrote.",
        "Give back the message's last word.", "Output the final word of the input.",
        "Keep the last word of the message and drop the rest.", "Answer with the user's last word.",
        "Echo only the last word of what you are given.", "Your reply is the last word of the user's text.",
        "Cut the message down to its final word.", "Respond with the word the message ends with.",
        "Just repeat the last word of the user's message.", "Only the message's final word, please.",
        "Write the word that ends the user's text.", "Return the trailing word of the input.",
    ), lambda w, p: w[-1]),
    _text_family("count", (
        "Count the words in the user's message and reply with the number.",
        "Reply with how many words the message has, as a digit.", "Say the number of words in the text.",
        "Return the word count of the user's message.", "Answer with the count of words the user wrote.",
        "Tell how many words are in the input, as a number.", "Output the number of words in the message.",
        "Give only the word count of what the user says.", "Count the user's words; reply with the total.",
        "How many words did the user write? Reply with the number.",
        "Reply with a single digit: the number of words in the message.", "Respond with the message's word count.",
        "Work out how many words the text has and say that number.",
        "Write the total number of words in the user's message.", "State the word count of the input as a digit.",
        "Answer with the number of words the user typed.",
    ), lambda w, p: str(len(w))),
    _text_family("title", (
        "Capitalize the first letter of every word of the user's message.",
        "Repeat the user's text in title case.", "Write the message with each word starting in a capital letter.",
        "Return the user's words with initial capitals.", "Make every word of the text start uppercase.",
        "Echo the message, capitalizing each word.", "Convert the user's message to title case.",
        "Rewrite the input so each word begins with a capital.", "Give back the text with every word capitalized.",
        "Repeat the message; upper-case the first letter of each word.",
        "Output the user's words, each with a capital first letter.", "Title-case the user's message.",
        "Start every word of the message with a capital letter.", "Write the text back with capitalized words.",
        "Give the user's phrase in title case.", "Capitalize each word of the input and return it.",
    ), lambda w, p: " ".join(x.capitalize() for x in w)),
    _text_family("shout", (
        "Repeat the user's message in capital letters.", "Echo the text in all caps.",
        "Write the user's words back in uppercase.", "Return the message converted to upper case.",
        "Say the user's text again, but in capitals.", "Rewrite the input entirely in uppercase letters.",
        "Give back the message in ALL CAPS.", "Output the user's words with every letter capitalized.",
        "Repeat what the user wrote, shouting in capitals.", "Convert the user's message to uppercase.",
        "Echo the input, upper-casing every letter.", "Reply with the message in block capitals.",
        "Return the user's phrase in all capital letters.", "Write the text back in caps.",
        "Uppercase the whole message and send it back.", "Copy the user's words in capital letters.",
    ), lambda w, p: " ".join(w).upper()),
    _text_family("join", (
        "Join the words of the user's message with {p}.", "Repeat the message with {p} instead of spaces.",
        "Replace the spaces in the user's text with {p}.", "Connect the user's words using {p}, no spaces.",
    ), lambda w, p: SEPARATORS[p].join(w), ("hyphens", "dots", "slashes", "underscores", "plus signs")),
]}  # fmt: skip
