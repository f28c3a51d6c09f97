"""Self-supervised reconstruction and completion documents from real offline prose (GenerativeAdapter's signal).

GenerativeAdapter (Chen et al., arXiv 2411.05877) pre-trains its adapter generator on plain text with two tasks
that need no questions: with the generated adapter and *without* the chunk in context, reproduce the chunk
(reconstruction) and continue the text that follows it (completion). Any amount of prose serves, so the generator
learns to store what a chunk says rather than where a templated value sits (``research/d2l-prose.md``).

This module turns real prose that is on every machine of the project, offline, into D2L training documents with
the schema of :func:`pipelines.d2l.synth.make_fact_docs`, so the ordinary recipe trains on them (gold-answer CE
through :func:`pipelines.d2l.objective.qa_loss`):

* sources (:func:`prose_sources`): the long descriptions in installed packages' ``METADATA`` (this project's own
  excluded) and the module docstrings of the Python standard library, with code blocks, doctest lines, tables and
  link-only lines removed;
* a document is a run of consecutive paragraphs of one source, ``tokens`` long (estimated, as
  :func:`pipelines.d2l.pages.estimate_tokens`);
* its ``qa`` rows are ``n_recon`` reconstruction rows (question: quote what follows a 4-word anchor of the
  document; answer: the next ``window`` words) and one completion row (question: continue the text; answer: the
  ``window`` words that follow the document in its source, which the document does not contain).

Real text holds real entities, which is fine for reconstruction and completion (the answers are spans of the
text, not facts to recall). Sources are split by a hash of their name (``split="heldout"``: about a tenth, never
in training). Deterministic in (n, seed, split, options) for a given set of installed packages and Python version.
No evaluation page (``evals/docs``, ``evals/docs_heldout``) is a source.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from pipelines.d2l.pages import estimate_tokens
from pipelines.d2l.synth import Doc, doc_id

__all__ = ["RECON_QUESTIONS", "clean_prose", "make_recon_docs", "prose_sources"]

RECON_QUESTIONS = ('Quote the words that follow "{a}" in the text.', 'What comes after "{a}" in the document?',
                   'Continue the passage from "{a}".', 'Repeat the text that follows "{a}".')  # fmt: skip
COMPLETE_QUESTIONS = ("Continue the text.", "What comes next in the document?", "How does the text go on?")

_OWN = {"agent_sleep", "agent-sleep"}
_SKIP_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[|+]|[-=~^*#`]{3,}\s*$|\.\. |:[a-z]+:|https?://\S+\s*$|!\[|<)")


def clean_prose(text: str) -> list[str]:
    """Paragraphs of ``text`` that read as prose: fenced and indented code, doctest and shell lines, tables,
    directives, images, HTML and link-only lines dropped; each paragraph joined to one line."""
    text = re.sub(r"```.*?```", "\n", text, flags=re.S)
    paras: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.startswith(("    ", "\t")) for ln in lines) or any(_SKIP_LINE.match(ln) for ln in lines):
            continue
        para = " ".join(ln.strip() for ln in lines)
        para = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", para)  # markdown links -> their text
        para = re.sub(r"`+([^`]*)`+_?", r"\1", para)
        para = re.sub(r"\s+", " ", para).strip()
        words = para.split()
        if len(words) >= 12 and sum(w.isalpha() for w in words) >= 0.6 * len(words):
            paras.append(para)
    return paras


def _metadata_texts() -> list[tuple[str, str]]:
    out = []
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for meta in sorted(Path(site).glob("*.dist-info/METADATA")):
            name = meta.parent.name.split("-")[0]
            if name.lower() in _OWN:
                continue
            raw = meta.read_text(encoding="utf-8", errors="replace")
            _, _, body = raw.partition("\n\n")  # the long description follows the headers
            out.append((f"metadata:{name}", body))
    return out


def _stdlib_texts() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        parts = [ast.get_docstring(tree) or ""]
        for node in tree.body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node) or ""
                if len(doc) > 200:
                    parts.append(doc)
        out.append((f"stdlib:{path.stem}", "\n\n".join(p for p in parts if p)))
    return out


@lru_cache(maxsize=1)
def prose_sources() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(source name, its prose paragraphs) for every source with at least 3 paragraphs, sorted by name."""
    found = [(name, tuple(clean_prose(text))) for name, text in _metadata_texts() + _stdlib_texts()]
    return tuple(sorted((n, p) for n, p in found if len(p) >= 3))


def _split_of(name: str) -> str:
    return "heldout" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10 == 0 else "train"


def make_recon_docs(n: int, seed: int, split: str = "train", *, tokens: tuple[int, int] = (128, 320),
                    window: int = 12, n_recon: int = 3) -> list[Doc]:  # fmt: skip
    """``n`` reconstruction/completion documents from the ``split``'s sources (see module doc).

    ``window``: words per answer; ``tokens``: the document's estimated length (inclusive). A source is drawn with
    probability proportional to its paragraphs, then a start paragraph.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    sources = [(name, paras) for name, paras in prose_sources() if _split_of(name) == split]
    if not sources:
        raise ValueError(f"no prose sources for split {split!r} (installed package metadata, stdlib docstrings)")
    rng = random.Random(f"recon:{seed}:{split}:{sys.version_info[:2]}")
    weights = [len(p) for _, p in sources]
    docs: list[Doc] = []
    tries = 0
    while len(docs) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise ValueError(f"could not draw {n} documents of {tokens} tokens from the {split} prose sources")
        name, paras = rng.choices(sources, weights=weights)[0]
        start = rng.randrange(len(paras))
        target = rng.randint(*tokens)
        words: list[str] = []
        i = start
        while i < len(paras) and estimate_tokens(" ".join(words)) < target:
            words += paras[i].split()
            i += 1
        while words and estimate_tokens(" ".join(words)) > tokens[1]:
            words.pop()
        after = " ".join(paras[i:]).split()[:window] if i < len(paras) else []
        if estimate_tokens(" ".join(words)) < tokens[0] or len(words) < 4 + window + 1 or len(after) < window // 2:
            continue
        text = " ".join(words)
        qa = []
        for s in sorted(rng.sample(range(len(words) - 4 - window + 1), min(n_recon, len(words) - 4 - window + 1))):
            anchor = " ".join(words[s : s + 4])
            answer = " ".join(words[s + 4 : s + 4 + window])
            qa.append({"question": rng.choice(RECON_QUESTIONS).format(a=anchor), "answer": answer,
                       "attribute": "recon.reconstruct"})  # fmt: skip
        qa.append({"question": rng.choice(COMPLETE_QUESTIONS), "answer": " ".join(after),
                   "attribute": "recon.complete"})  # fmt: skip
        docs.append({"id": doc_id(text), "kind": "recon", "source": name, "text": text, "facts": {}, "spans": {},
                     "qa": qa, "probe_qa": [], "split": split})  # fmt: skip
    return docs
