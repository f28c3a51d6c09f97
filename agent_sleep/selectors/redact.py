"""Redaction: secrets and personal data out of every text before it can reach weights or reports.

:class:`Redactor` finds e-mail addresses, phone numbers, payment card numbers, IBANs and secrets
(API keys, tokens, JWTs, private keys, passwords) and replaces each with a typed placeholder
(``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[SECRET]``). The same text always gives the same
output, and placeholders are never found again, so redacting twice changes nothing.
:class:`RedactSelector` is the chain step: it keeps every candidate and hands on a redacted copy.

Where the finding comes from:

* phone numbers: ``phonenumbers`` (Google's libphonenumber) ``PhoneNumberMatcher`` at ``VALID``
  leniency, once per region in ``phone_regions`` (numbers written with ``+`` and a country code are
  found from any region);
* provider keys and tokens: the regular expressions of ``detect-secrets``' regex plugins (AWS, GitHub,
  GitLab, Slack, Stripe, Twilio, SendGrid, npm, PyPI, OpenAI, Azure, Discord, Telegram, ...), plus
  rules here for newer formats (``sk-proj-``/``sk-ant-``, ``github_pat_``, Google ``AIza``, ``hf_``,
  ``sk_test_``), JWTs, PEM private keys, ``Authorization``/``Bearer`` values, credentials in URLs,
  ``password=``/``API_KEY:``-style assignments (env lines, JSON, YAML, query strings) and
  "my password is ..." in prose;
* random-looking tokens: ``detect-secrets``' Shannon entropy, run only on candidate tokens (20+
  characters of base64 alphabet mixing upper case, lower case and digits), never per line;
* e-mail (a practical RFC 5322 subset), cards (13-19 digits with optional spaces/dashes, a known
  leading digit and a Luhn check) and IBANs (country, ISO 7064 mod-97 check) are rules here: no
  maintained offline library finds them in free text better than these few lines.

Not covered (say so in reports): names, postal addresses and other free-text personal data (they need
a named-entity model; ``presidio-analyzer`` would need a spaCy model that is not on PyPI), lowercase
hex keys written in prose without a key name (indistinguishable from commit hashes), obfuscated
e-mails ("jane at example dot com").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent_sleep.errors import ConfigError, MissingDependencyError
from agent_sleep.interfaces import Decision, Selection
from agent_sleep.selectors.base import SelectorContext, SelectorParams
from agent_sleep.selectors.candidates import Candidate, DocumentCandidate, EpisodeCandidate, FeedbackItem

__all__ = ["KINDS", "PLACEHOLDERS", "Finding", "RedactSelector", "Redacted", "Redactor"]

KINDS: Final = ("secret", "card", "iban", "email", "phone")
"""Every kind of finding, highest priority first (a span two rules find takes the first kind)."""

PLACEHOLDERS: Final[Mapping[str, str]] = {k: f"[{k.upper()}]" for k in KINDS}


@dataclass(frozen=True)
class Finding:
    """One span of the input text that was replaced: its kind and the rule that found it, never the value."""

    kind: str
    start: int
    end: int
    rule: str = ""


@dataclass(frozen=True)
class Redacted:
    """The redacted text and what was replaced (positions refer to the input text)."""

    text: str
    findings: tuple[Finding, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Findings per kind, in :data:`KINDS` order, kinds without findings left out."""
        c = Counter(f.kind for f in self.findings)
        return {k: c[k] for k in KINDS if c[k]}


# ---------------------------------------------------------------- rules

_EMAIL = re.compile(
    r"(?<![\w.%+@-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,22}(?![\w,-]|\.\d)")
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])")

# Assignments of a credential: env lines, JSON/YAML keys (camelCase too), query strings, CLI flags.
# The key must end in one of these words; short ones must stand alone or after a separator.
_SECRET_KEY = (
    r"(?:(?:(?<![A-Za-z0-9])|(?<=[_.-]))(?:pin(?:[_-]?code)?|pwd|cvv|cvc)|(?<=[_.-])pass|"
    r"pass(?:word|wd|phrase|code)|secret(?:[_-]?key)?|api[_-]?key|apikey|"
    r"(?:access|private|signing|encryption)[_-]?key|token|credentials?|session[_-]?id)"
)
SENSITIVE_KEY: Final = re.compile(rf"(?i){_SECRET_KEY}$")
"""A mapping key whose value is a credential as a whole (``{"password": ...}``, ``DB_PASSWORD``, ``accessToken``);
use ``.search``."""

# A value in double quotes (also escaped ones, inside a JSON string), single quotes, or bare.
_QUOTED_VALUE = r"(?:\\?\"((?:\\(?!\")|[^\"\\\n]){1,200})\\?\"|'([^'\n]{1,200})'|([^\s\"'\\,;}\]]{1,300}))"
_ASSIGN = re.compile(rf"(?i){_SECRET_KEY}(?![A-Za-z0-9])\\?[\"']?\s*(?::|=>|=)\s*{_QUOTED_VALUE}")
_CLI_FLAG = re.compile(rf"(?i)--?{_SECRET_KEY}(?:[ =])\s*{_QUOTED_VALUE}")
_PROSE_PASSWORD = re.compile(
    r"(?i)\b(?:password|passcode|passphrase|pin|pwd)\b(?:\s+(?:is|was|=|:|set to|changed to|reset to|now))*\s+"
    r"[\"'“]?([^\s\"'”]{4,100})"
)
_AUTHORIZATION = re.compile(
    r"(?i)\b(?:authorization|x-api-key|api-key)\\?[\"']?\s*[:=]\s*\\?[\"']?(?:(?:bearer|basic|token|digest)\s+)?([^\s\"'\\,;]{8,})"
)
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{12,}=*)")
_URL_CREDENTIALS = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s:/]*:([^\s/]+)@[^\s/@]")  # up to the last @
_URL_AUTHORITY = re.compile(r"://[^\s/:]*:[^\s/]*$")  # inside the password of user:password@
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
)
_TOKEN_RULES: Final = (
    ("jwt", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("sk_key", re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]*[A-Za-z0-9]{20}[A-Za-z0-9_-]*")),
    ("github", re.compile(r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("slack", re.compile(r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}")),
    ("google", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}")),
    ("huggingface", re.compile(r"(?<![\w-])hf_[A-Za-z0-9]{30,}")),
    ("stripe", re.compile(r"(?<![\w-])[spr]k_(?:live|test)_[0-9A-Za-z]{16,}")),
    ("npm", re.compile(r"(?<![\w-])npm_[A-Za-z0-9]{36}")),
)
# detect-secrets plugins left out: IPPublicDetector (an address is not a credential and matches version
# strings), PrivateKeyDetector (finds the header only; _PEM takes the whole block), JwtTokenDetector
# (its lazy tail stops before the signature; the jwt rule above takes all three parts).
# BasicAuthDetector (its match takes the user name and "://" too; url_credentials takes the password),
# and the keyword-context detectors for IBM Cloud, Cloudant and SoftLayer, whose lookbehinds at every
# character cost a quarter of the scan while the assignment rule already finds ``*_password = ...``.
_DS_EXCLUDED: Final = frozenset({
    "IPPublicDetector", "PrivateKeyDetector", "JwtTokenDetector", "BasicAuthDetector",
    "IbmCloudIamDetector", "IbmCosHmacDetector", "CloudantDetector", "SoftlayerDetector",
})  # fmt: skip

_ENTROPY_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/=_-])")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_CASE_RUN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(k.upper() for k in KINDS) + r")\]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    s = compact.upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _card_ok(digits: str) -> bool:
    return digits[0] in "23456" and _luhn(digits)


def _longest_valid_prefix(raw: str, lengths: Iterable[int], ok: Any) -> int:
    """The end (in ``raw``) of the longest prefix whose compact form (separators removed) has one of
    ``lengths`` and passes ``ok``; 0 if none. A prefix must end at a separator or the end of ``raw``
    (a card number followed by " 12/26" is still found; a long digit run is not cut into a card)."""
    ends = [i + 1 for i, ch in enumerate(raw) if ch not in " -"]  # raw end of each compact prefix
    compact = "".join(ch for ch in raw if ch not in " -")
    for n in lengths:
        if n <= len(compact) and (n == len(compact) or raw[ends[n - 1]] in " -") and ok(compact[:n]):
            return ends[n - 1]
    return 0


_PHONE_RUN = re.compile(r"\d(?:[ \t().\-/]{0,3}\d)*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}([./])\d{1,2}\1\d{4}|\d{4}/\d{2}/\d{2}")
_PHONE_CONTEXT = 12  # characters on each side, for "+", "tel:" and the matcher's own checks


def _phone_windows(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` that may hold a phone number (merged where they touch)."""
    windows: list[tuple[int, int]] = []
    for m in _PHONE_RUN.finditer(text):
        run = m.group()
        n = sum(c.isdigit() for c in run)
        if (7 <= n <= 17 or n > 17 and len(re.findall(r"\d+", run)) > 1) and not _DATE.fullmatch(run):
            lo, hi = max(0, m.start() - _PHONE_CONTEXT), min(len(text), m.end() + _PHONE_CONTEXT)
            if windows and lo <= windows[-1][1]:
                windows[-1] = (windows[-1][0], hi)
            else:
                windows.append((lo, hi))
    return windows


def _path_parts(start: int, token: str) -> list[tuple[int, str]]:
    """A URL path or file path is judged part by part ("files/9fK2.../view" hides only the id);
    anything else (base64 may hold slashes) as one token. Parts come with their offsets."""
    parts = token.split("/")
    if len(parts) > 1 and any(len(p) >= 2 and p.isalpha() and p.islower() for p in parts):
        out, pos = [], start
        for p in parts:
            out.append((pos, p))
            pos += len(p) + 1
        return out
    stripped = token.strip("/")
    return [(start + token.index(stripped), stripped)] if stripped else []


def _inside_identifier(text: str, start: int, end: int) -> bool:
    """Digits glued to letters by a dash, slash or underscore ("INV-2024-000123") are an id, not a
    phone number (two numbers joined by a slash still are numbers)."""
    return bool(re.search(r"[A-Za-z][-/_]$", text[max(0, start - 2) : start])) or bool(
        re.match(r"[-/_][A-Za-z]", text[end : end + 2])
    )


def _credential_like(value: str) -> bool:
    """A prose password worth hiding: has a digit or a symbol, or odd capitals; not a word written as
    words are ("the password is required", "Password Manager", "PIN CODE")."""
    v = value.rstrip(".,;:)")
    if len(v) < 4 or _PLACEHOLDER.fullmatch(v):
        return False
    if v.isalpha():
        return not (v.islower() or v.isupper() or (v[0].isupper() and v[1:].islower()))
    return True


def _value_span(m: re.Match[str]) -> tuple[int, int]:
    """The span of the last group that matched (the value), else of the whole match."""
    for g in range(m.re.groups, 0, -1):
        if m.group(g) is not None:
            return m.span(g)
    return m.span()


class Redactor:
    """Finds and replaces secrets and personal data in text.

    ``kinds``: which of :data:`KINDS` to redact (default all). ``phone_regions``: ISO country codes whose
    national formats count as phone numbers (international ``+CC`` numbers are found whatever this says).
    ``entropy``: also redact random-looking tokens: 20+ characters mixing digits, capitals and
    small letters, not words glued together, whose Shannon entropy is at least ``entropy_threshold`` of the
    most their length allows (0.82 keeps 99% of random base62 tokens of 20-64 characters). Setup
    (compiling rules, importing the libraries) happens once here; :meth:`redact` is cheap per string.
    """

    def __init__(self, kinds: Iterable[str] = KINDS, *, phone_regions: Sequence[str] = ("US", "GB"),
                 entropy: bool = True, entropy_threshold: float = 0.82) -> None:  # fmt: skip
        chosen = tuple(kinds)
        unknown = sorted(set(chosen) - set(KINDS))
        if unknown or not chosen:
            raise ConfigError(f"unknown redaction kind(s) {unknown}; choose from {list(KINDS)}")
        self.kinds = tuple(k for k in KINDS if k in chosen)
        self.entropy = entropy
        self.entropy_threshold = entropy_threshold
        self._secret_rules: list[tuple[str, re.Pattern[str]]] = []
        self._entropy_fn = None
        if "secret" in self.kinds:
            self._secret_rules = self._load_secret_rules()
        self._phone_regions: tuple[str, ...] = ()
        if "phone" in self.kinds:
            self._phone_regions = self._load_phone_regions(phone_regions)

    def _load_secret_rules(self) -> list[tuple[str, re.Pattern[str]]]:
        try:
            from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
            from detect_secrets.plugins.base import RegexBasedDetector
            from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise MissingDependencyError("redacting secrets needs detect-secrets: pip install 'detect-secrets>=1.5,<2'") from exc
        rules: list[tuple[str, re.Pattern[str]]] = [("pem", _PEM), ("url_credentials", _URL_CREDENTIALS), *_TOKEN_RULES]
        classes = sorted(get_mapping_from_secret_type_to_class().values(), key=lambda c: c.__name__)
        for cls in classes:
            if issubclass(cls, RegexBasedDetector) and cls.__name__ not in _DS_EXCLUDED:
                rules.extend((f"detect_secrets.{cls.__name__}", p) for p in cls.denylist)
        rules += [("authorization", _AUTHORIZATION), ("bearer", _BEARER), ("assignment", _ASSIGN),
                  ("cli_flag", _CLI_FLAG)]  # fmt: skip
        if self.entropy:
            self._entropy_fn = Base64HighEntropyString().calculate_shannon_entropy
        return rules

    @staticmethod
    def _load_phone_regions(regions: Sequence[str]) -> tuple[str, ...]:
        try:
            import phonenumbers
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise MissingDependencyError("redacting phone numbers needs phonenumbers: pip install 'phonenumbers>=8.13'") from exc
        known = phonenumbers.SUPPORTED_REGIONS
        bad = [r for r in regions if r.upper() not in known]
        if bad or not regions:
            raise ConfigError(f"unknown phone region(s) {bad}; use ISO 3166 codes such as 'US', 'GB', 'DE'")
        return tuple(r.upper() for r in regions)

    # ------------------------------------------------------------ finding

    def find(self, text: str) -> tuple[Finding, ...]:
        """Every span to replace, merged where rules overlap, in text order."""
        if not text:
            return ()
        spans: list[Finding] = []
        for kind in self.kinds:
            spans.extend(getattr(self, f"_find_{kind}")(text))
        return _merge(_outside_placeholders(text, spans))

    def _find_secret(self, text: str) -> Iterator[Finding]:
        for rule, pattern in self._secret_rules:
            for m in pattern.finditer(text):
                start, end = _value_span(m)
                value = text[start:end]
                # detect-secrets patterns may include the delimiters around the value.
                stripped = value.lstrip(" \t\r\n\"'=:")
                start += len(value) - len(stripped)
                end = start + len(stripped.rstrip(" \t\r\n\"':"))
                yield Finding("secret", start, end, rule)
        for m in _PROSE_PASSWORD.finditer(text):
            if _credential_like(m.group(1)):
                start, end = m.span(1)
                while end > start and text[end - 1] in ".,;:)":
                    end -= 1
                yield Finding("secret", start, end, "prose_password")
        if self._entropy_fn is not None:
            for m in _ENTROPY_TOKEN.finditer(text):
                for start, token in _path_parts(m.start(), m.group()):
                    if self._random_looking(token):
                        yield Finding("secret", start, start + len(token), "entropy")

    def _random_looking(self, token: str) -> bool:
        digits = sum(c.isdigit() for c in token)
        upper = sum(c.isupper() for c in token)
        lower = sum(c.islower() for c in token)
        if digits < 1 or upper < 2 or lower < 2:
            return False  # hashes, UUIDs, slugs, paths and words
        if max(len(run) for run in _ALNUM_RUN.findall(token)) < 16:
            return False  # short parts joined by dashes: a name ("SmolLM2-135M-Instruct"), not a key
        if len(token) >= 3 * len(_CASE_RUN.findall(token)):
            # Runs of 3+ characters on average between case or digit changes: words glued into an
            # identifier ("PaymentGatewayTimeout2024Q3Report"); 1-2% of random tokens look like this.
            return False
        assert self._entropy_fn is not None
        ceiling = math.log2(min(len(token), 64))
        return self._entropy_fn(token) >= self.entropy_threshold * ceiling

    @staticmethod
    def _find_email(text: str) -> Iterator[Finding]:
        if "@" in text:
            for m in _EMAIL.finditer(text):
                # "scheme://user:pass@word@host": url_credentials takes the password, the host stays.
                if not _URL_AUTHORITY.search(text, max(0, m.start() - 300), m.start()):
                    yield Finding("email", m.start(), m.end(), "email")

    @staticmethod
    def _find_card(text: str) -> Iterator[Finding]:
        for m in _CARD.finditer(text):
            raw = m.group()
            if len({c for c in raw if not c.isdigit()}) > 1:
                continue  # mixed separators: not how a card number is written
            end = _longest_valid_prefix(raw, range(19, 12, -1), _card_ok)
            if end:
                yield Finding("card", m.start(), m.start() + end, "luhn")

    @staticmethod
    def _find_iban(text: str) -> Iterator[Finding]:
        for m in _IBAN.finditer(text):
            end = _longest_valid_prefix(m.group(), range(34, 14, -1), _iban_ok)
            if end:
                yield Finding("iban", m.start(), m.start() + end, "iban_mod97")

    def _find_phone(self, text: str) -> Iterator[Finding]:
        # PhoneNumberMatcher tries to parse every digit group it meets (prices, dates, ids), which makes
        # it the slowest rule by far; hand it only windows around runs of 7-17 digits.
        from phonenumbers import Leniency, PhoneNumberMatcher

        for lo, hi in _phone_windows(text):
            window = text[lo:hi]
            for region in self._phone_regions:
                for m in PhoneNumberMatcher(window, region, leniency=Leniency.VALID):
                    if not _inside_identifier(text, lo + m.start, lo + m.end):
                        yield Finding("phone", lo + m.start, lo + m.end, "phonenumbers")

    # ------------------------------------------------------------ replacing

    def redact(self, text: str) -> Redacted:
        """``text`` with every finding replaced by its kind's placeholder."""
        findings = self.find(text)
        if not findings:
            return Redacted(text, ())
        out, pos = [], 0
        for f in findings:
            out += [text[pos : f.start], PLACEHOLDERS[f.kind]]
            pos = f.end
        out.append(text[pos:])
        return Redacted("".join(out), findings)

    def redact_value(self, value: Any, counts: Counter[str], key: str | None = None) -> Any:
        """A JSON-like value with every string redacted (recursively through dicts, lists and tuples);
        a value under a credential key (``password``, ``api_key``, ``token``...) becomes ``[SECRET]`` whole.
        Numbers are checked as text (a card number given as an int). Mapping keys are kept as they are."""
        if key is not None and "secret" in self.kinds and SENSITIVE_KEY.search(key) and _is_scalar_secret(value):
            counts["secret"] += 1
            return PLACEHOLDERS["secret"]
        if isinstance(value, str):
            r = self.redact(value)
            counts.update(f.kind for f in r.findings)
            return r.text
        if isinstance(value, Mapping):
            return {k: self.redact_value(v, counts, k if isinstance(k, str) else None) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact_value(v, counts) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            r = self.redact(str(value))
            if r.findings:
                counts.update(f.kind for f in r.findings)
                return r.text
        return value


def _is_scalar_secret(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip()) and not _PLACEHOLDER.fullmatch(value.strip())
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outside_placeholders(text: str, spans: list[Finding]) -> list[Finding]:
    """Findings less any placeholder already in the text (so redacting twice changes nothing); a piece
    left with no letter or digit is dropped."""
    holes = [m.span() for m in _PLACEHOLDER.finditer(text)]
    if not holes:
        return [f for f in spans if f.end > f.start]
    out: list[Finding] = []
    for f in spans:
        pos = f.start
        for hs, he in holes:
            if he <= pos or hs >= f.end:
                continue
            out.append(Finding(f.kind, pos, hs, f.rule))
            pos = he
        out.append(Finding(f.kind, pos, f.end, f.rule))
    return [f for f in out if f.end > f.start and any(c.isalnum() for c in text[f.start : f.end])]


def _merge(spans: list[Finding]) -> tuple[Finding, ...]:
    """Overlapping spans become one, of the highest-priority kind among them."""
    if not spans:
        return ()
    rank = {k: i for i, k in enumerate(KINDS)}
    spans.sort(key=lambda f: (f.start, -f.end, rank[f.kind]))
    merged = [spans[0]]
    for f in spans[1:]:
        last = merged[-1]
        if f.start < last.end:
            best = last if rank[last.kind] <= rank[f.kind] else f
            merged[-1] = Finding(best.kind, last.start, max(last.end, f.end), best.rule)
        else:
            merged.append(f)
    return tuple(merged)


# ---------------------------------------------------------------- the chain step


class RedactSelector:
    """Keeps every candidate and hands on a redacted copy: message contents, tool-call arguments and
    tool results (every string in each message but its ``role``), feedback label, comment, correction
    and instruction, episode outcome; document title, text, source and meta. Ids and agent names are kept.
    """

    class Params(SelectorParams):
        """What a chain config may set under ``redact``'s ``params:``."""

        kinds: tuple[str, ...] = KINDS
        phone_regions: tuple[str, ...] = ("US", "GB")
        entropy: bool = True

    def __init__(self, redactor: Redactor | None = None, *, name: str = "redact") -> None:
        self.redactor = redactor if redactor is not None else Redactor()
        self._name = name

    @classmethod
    def from_params(cls, params: RedactSelector.Params, context: SelectorContext) -> RedactSelector:
        del context  # redaction depends on the text only
        return cls(Redactor(kinds=params.kinds, phone_regions=params.phone_regions, entropy=params.entropy))

    @property
    def name(self) -> str:
        return self._name

    def select(self, items: Iterable[Candidate], /) -> Selection[Candidate]:
        kept: list[Candidate] = []
        decisions: list[Decision] = []
        for item in items:
            counts: Counter[str] = Counter()
            redacted = self.redact_candidate(item, counts)
            kept.append(redacted)
            decisions.append(Decision(item.id, True, _reason(counts), self._name))
        return Selection(tuple(kept), tuple(decisions))

    def redact_candidate(self, item: Candidate, counts: Counter[str]) -> Candidate:
        """A copy of ``item`` with every free text redacted; adds what was found to ``counts``."""
        rv = self.redactor.redact_value
        if isinstance(item, EpisodeCandidate):
            messages = tuple(
                {k: (v if k == "role" else rv(v, counts, k)) for k, v in m.items()} for m in item.messages
            )
            feedback = tuple(self._feedback(f, counts) for f in item.feedback)
            return item.replace(messages=messages, feedback=feedback, outcome=rv(item.outcome, counts))
        if isinstance(item, DocumentCandidate):
            return item.replace(title=rv(item.title, counts), text=rv(item.text, counts),
                                source=rv(item.source, counts), meta=rv(item.meta, counts))  # fmt: skip
        raise TypeError(f"RedactSelector takes episode or document candidates, not {type(item).__name__}")

    def _feedback(self, f: FeedbackItem, counts: Counter[str]) -> FeedbackItem:
        rv = self.redactor.redact_value
        return FeedbackItem(id=f.id, score=f.score, label=rv(f.label, counts), comment=rv(f.comment, counts),
                            correction=rv(f.correction, counts), source=f.source, created_at=f.created_at,
                            instruction=rv(f.instruction, counts))  # fmt: skip


def _reason(counts: Counter[str]) -> str:
    parts = [f"{counts[k]} {k}" for k in KINDS if counts[k]]
    return "redacted " + ", ".join(parts) if parts else "nothing to redact"
