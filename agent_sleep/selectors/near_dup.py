"""``near_dup``: one episode of each group of (near-)duplicates, the first the stream brings (the oldest).

``minhash`` (default): the episode's conversation text, lowercased, as overlapping ``shingle``-word
runs; a MinHash signature of ``num_perm`` values estimates the Jaccard similarity of two episodes'
shingle sets, and locality-sensitive hashing (bands of the signature as bucket keys) finds which
earlier episodes to compare with, so each episode costs the same however many came before.
An episode whose estimated similarity to a kept one is at least ``threshold`` is dropped, naming its
kept twin (one whose feedback carries an instruction is handed on for the instruction only; an episode
used for its instruction only is never compared). ``exact``: equal after lowercasing and dropping punctuation and whitespace differences.

State grows with the kept episodes of this run (a signature and one bucket entry per band each),
never with dropped ones. A bucket remembers its first 32 episodes only, so each new episode is compared
with at most ``32 * bands`` others however alike the stream is (templated conversations share many
buckets); a twin is then missed only if it shares no band with its original outside full buckets.
Documents are handed on. Deterministic: hashes are CRC-32 and the
permutations come from a fixed seed, so the same stream gives the same decisions in every process.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from agent_sleep.interfaces import Decision, Selection
from agent_sleep.selectors.base import SelectorContext, SelectorParams
from agent_sleep.selectors.candidates import Candidate, EpisodeCandidate

__all__ = ["NearDupParams", "NearDupSelector"]

_WORD = re.compile(r"\w+")
_PRIME = (1 << 61) - 1
_BUCKET = 32  # kept episodes one LSH bucket remembers: bounds the comparisons per episode
_ROWS = 32768  # shingles hashed at once (x num_perm x 8 bytes of scratch memory)


class NearDupParams(SelectorParams):
    method: Literal["minhash", "exact"] = "minhash"
    threshold: float = Field(default=0.85, gt=0, le=1)
    shingle: int = Field(default=3, ge=1, le=16)
    num_perm: int = Field(default=64, ge=16, le=512, multiple_of=16)


class NearDupSelector:
    name = "near_dup"
    Params = NearDupParams

    def __init__(self, params: NearDupParams, context: SelectorContext | None = None) -> None:
        self.params = params
        self._exact: dict[bytes, str] = {}
        if params.method == "minhash":
            self._minhash = _MinHashIndex(params)

    @classmethod
    def from_params(cls, params: NearDupParams, context: SelectorContext) -> NearDupSelector:
        return cls(params, context)

    def select(self, items: Iterable[Candidate], /) -> Selection[Candidate]:
        items = list(items)
        episodes = [i for i in items if isinstance(i, EpisodeCandidate) and i.instruction_only is None]
        words = {e.id: _WORD.findall(e.text.lower()) for e in episodes}
        sigs = keys = None
        if self.params.method == "minhash":
            sigs = self._minhash.signatures([words[e.id] for e in episodes])
            keys = self._minhash.band_keys(sigs)
        row = dict(zip((e.id for e in episodes), range(len(episodes))))
        kept: list[Candidate] = []
        decisions: list[Decision] = []
        for item in items:
            if not isinstance(item, EpisodeCandidate):
                kept.append(item)
                decisions.append(Decision(item.id, True, "not an episode: handed on", self.name))
                continue
            if item.instruction_only is not None:  # its conversation is not used: no twin of anything
                kept.append(item)
                decisions.append(Decision(item.id, True, "used for its instruction only: not compared", self.name))
                continue
            ws = words[item.id]
            if sigs is None or len(ws) < self.params.shingle:  # too short to shingle: exact match only
                key = hashlib.blake2b(" ".join(ws).encode(), digest_size=16).digest()
                twin = self._exact.get(key)
                if twin is None:
                    self._exact[key] = item.id
                    kept.append(item)
                    decisions.append(Decision(item.id, True, "no duplicate seen before", self.name))
                else:
                    self._drop(item, f"duplicate of episode {twin} (same words)", kept, decisions)
                continue
            twin, similarity = self._minhash.add(item.id, sigs[row[item.id]], keys[row[item.id]])  # type: ignore[index]
            if twin is None:
                kept.append(item)
                decisions.append(Decision(item.id, True, "no near-duplicate seen before", self.name))
            else:
                self._drop(item, f"near-duplicate of episode {twin} (estimated similarity {similarity:.2f} >= "
                                 f"{self.params.threshold:g})", kept, decisions)  # fmt: skip
        return Selection(tuple(kept), tuple(decisions))

    def _drop(self, item: EpisodeCandidate, why: str, kept: list[Candidate], decisions: list[Decision]) -> None:
        """Drop a twin, or hand on its instruction-only copy when its feedback carries an instruction."""
        instead = item.keep_instructions(why)
        if instead is not None:
            kept.append(instead[0])
        decisions.append(Decision(item.id, instead is not None, instead[1] if instead else why, self.name))


class _MinHashIndex:
    """MinHash signatures of the kept episodes, with LSH buckets to find candidates for comparison."""

    def __init__(self, params: NearDupParams) -> None:
        import numpy as np

        self.np = np
        self.k, self.threshold = params.shingle, params.threshold
        rng = np.random.default_rng(20260101)
        self.a = rng.integers(1, 1 << 32, size=params.num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=params.num_perm, dtype=np.uint64)
        self.mix = rng.integers(1, 1 << 32, size=params.shingle, dtype=np.uint64)
        self.bands = _bands(params.num_perm, params.threshold)
        self.rows = params.num_perm // self.bands
        self.band_mix = rng.integers(1, 1 << 32, size=self.rows, dtype=np.uint64)
        self.buckets: dict[int, list[int]] = {}  # band key -> indexes of kept episodes (at most _BUCKET)
        self.sigs = np.zeros((0, params.num_perm), dtype=np.uint32)  # row i: signature of kept episode i
        self.ids: list[str] = []

    def signatures(self, docs: list[list[str]]) -> Any:
        """One signature row per document (uint32); documents are hashed in groups of at most
        ``_ROWS`` shingles, so memory stays bounded however long a conversation is."""
        np = self.np
        out = np.zeros((len(docs), len(self.a)), dtype=np.uint32)
        group: list[tuple[int, Any]] = []
        size = 0
        for n, words in enumerate(docs):
            if len(words) < self.k:
                continue
            h = self._shingles(words)
            if len(h) > _ROWS:  # one long conversation: its own running minimum, slice by slice
                sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
                for start in range(0, len(h), _ROWS):
                    sig = np.minimum(sig, self._permuted(h[start : start + _ROWS]).min(axis=0))
                out[n] = (sig & np.uint64(0xFFFFFFFF)).astype(np.uint32)
                continue
            if size + len(h) > _ROWS:
                self._fill(out, group)
                group, size = [], 0
            group.append((n, h))
            size += len(h)
        self._fill(out, group)
        return out

    def _shingles(self, words: list[str]) -> Any:
        np = self.np
        w = np.fromiter((zlib.crc32(x.encode()) for x in words), dtype=np.uint64, count=len(words))
        m = len(words) - self.k + 1
        h = np.zeros(m, dtype=np.uint64)
        for j in range(self.k):  # a shingle's hash mixes its words' hashes (wrapping uint64 arithmetic)
            h = h * np.uint64(0x100000001B3) + w[j : j + m] * self.mix[j]
        return np.unique(h & np.uint64(0xFFFFFFFF))

    def _permuted(self, h: Any) -> Any:
        return (h[:, None] * self.a[None, :] + self.b[None, :]) % self.np.uint64(_PRIME)

    def _fill(self, out: Any, group: list[tuple[int, Any]]) -> None:
        if not group:
            return
        np = self.np
        starts = np.cumsum([0] + [len(h) for _, h in group[:-1]])
        mins = np.minimum.reduceat(self._permuted(np.concatenate([h for _, h in group])), starts, axis=0)
        out[[n for n, _ in group]] = (mins & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def add(self, item_id: str, sig: Any, keys: list[int]) -> tuple[str | None, float]:
        """The kept twin of ``sig`` (with LSH bucket ``keys``) and the estimated similarity, or (None, 0)
        after keeping it."""
        np = self.np
        found: set[int] = set()
        for key in keys:
            found.update(self.buckets.get(key, ()))
        if found:
            idx = np.fromiter(sorted(found), dtype=np.int64, count=len(found))
            same = np.count_nonzero(self.sigs[idx] == sig, axis=1)
            best = int(same.argmax())  # the earliest kept of the most similar
            similarity = float(same[best]) / len(sig)
            if similarity >= self.threshold:
                return self.ids[int(idx[best])], similarity
        n = len(self.ids)
        if n == len(self.sigs):
            grown = np.zeros((max(2 * n, 1024), len(sig)), dtype=np.uint32)
            grown[:n] = self.sigs
            self.sigs = grown
        self.sigs[n] = sig
        self.ids.append(item_id)
        for key in keys:
            bucket = self.buckets.setdefault(key, [])
            if len(bucket) < _BUCKET:
                bucket.append(n)
        return None, 0.0

    def band_keys(self, sigs: Any) -> list[list[int]]:
        """The LSH bucket keys of each signature row: each band's values folded into one number, tagged
        with the band's index (bands <= num_perm <= 512 < 2**10)."""
        np = self.np
        bands = sigs.astype(np.uint64).reshape(len(sigs), self.bands, self.rows) * self.band_mix
        folded = bands.sum(axis=2, dtype=np.uint64)  # wraps; a collision only costs a comparison
        keyed = (folded << np.uint64(10)) | np.arange(self.bands, dtype=np.uint64)
        return keyed.tolist()  # type: ignore[no-any-return]


def _bands(num_perm: int, threshold: float) -> int:
    """The fewest bands (dividing ``num_perm``) that make a pair at ``threshold`` a candidate with
    probability >= 0.95: fewer bands, fewer bucket entries per kept episode."""
    for b in sorted(d for d in range(1, num_perm + 1) if num_perm % d == 0):
        r = num_perm // b
        if 1 - (1 - threshold**r) ** b >= 0.95:
            return b
    return num_perm
