r"""Near-duplicate detection: MinHash signatures over word shingles, LSH banding, then verification.

Shingles. A text is casefolded and split into ``\w+`` words (:func:`words`); its shingles are the runs of
``shingle_size`` consecutive words. A text with fewer words is one shingle of all of them; an empty text (no
word) has none, is always kept and is never a duplicate.

MinHash. Each word is hashed from its UTF-8 bytes, the words of a shingle are combined with per-position
multipliers and mixed (murmur3's finaliser), and the top 32 bits are the shingle's hash ``h`` (two distinct
shingles collide with probability 2**-32). Permutation ``i`` is ``h -> a_i * h mod 2**32`` with an odd
``a_i``, a bijection of the 32-bit values: as the ``h`` are uniform, the minimum over a text's shingles falls
on each of them with equal probability, and two texts' minima agree with probability equal to the Jaccard
similarity ``J`` of their shingle sets. A signature is ``bands * rows`` such minima (112 uint32 by default);
the unit tests check that the estimates are unbiased and spread like 112 independent permutations. All
constants come from BLAKE2b of ``seed``, never from Python's per-process ``hash()``: signatures are the same
in every process and on every machine.

LSH. The signature is cut into ``bands`` bands of ``rows`` values; two texts become candidates when one band
agrees in all rows, which happens with probability ``P(s) = 1 - (1 - s**rows)**bands``
(:func:`candidate_probability`). datatrove's 14 bands x 8 rows, used without verification, put the steep part
of this S-curve between J 0.6 and 0.8 (P = 0.05 at 0.5, 0.21 at 0.6, 0.50 at 0.685, 0.77 at 0.75, 0.92 at
0.8). The defaults here band the same 112 values as 28 x 4 (P = 0.52 at 0.4, 0.84 at 0.5, 0.98 at 0.6,
0.9995 at 0.7): nearly every pair near the threshold becomes a candidate, and verification decides.

Verification. A candidate is a duplicate only if the share of equal signature values, an unbiased estimate of
``J`` with standard error ``sqrt(J(1-J)/112)`` (0.045 at 0.65), is at least ``threshold``. Banding alone (as
datatrove and plain datasketch do) also drops one pair in 20 at J = 0.5 with 14 x 8, and datatrove's
union-find chains A~B, B~C into one cluster; here a text is compared only with texts that were kept, and the
earliest kept match is reported. Found = candidate and verified, so at equal bands x rows recall can only be
lower than banding alone: hence bands of few rows. A band key shared by more than ``_BUCKET_CAP`` (16)
distinct kept texts (boilerplate) indexes only the first 16, so candidates per text stay bounded; a copy of a
later one is still found through its other bands.

Speed. Everything per word and per shingle is NumPy over a batch of texts: the texts are joined into one
byte buffer, word boundaries come from a byte table, word hashes from 8-byte loads at the word starts, and
the 112 permutations of the shingles of a few texts are one broadcast multiply and ``np.minimum.reduceat``.
Python runs once per batch, and per text only for the few texts that share a band key with another text of
the same batch.

Memory. A kept text costs the low 16 bits of its signature values (224 bytes by default; two different
minima agree on them with probability 2**-16, which moves an estimate by less than 0.0001) and one entry per
band in an open-addressing hash table (8-byte key, 4-byte id, at most 70 % full). Texts are not kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from kubetune.api.v1alpha1.datasetbuild import NearDedupSpec

__all__ = ["NearDuplicateIndex", "candidate_probability", "find_near_duplicates", "signatures", "words"]

_WORD = re.compile(r"\w+")
_BATCH_DOCS = 4096  # at most this many texts are hashed and resolved together,
_BATCH_CHARS = 1 << 21  # and at most this many characters (unless one text is longer): temporaries ~ 6x that
_BUCKET_CAP = 16  # a band key indexes at most this many kept texts (boilerplate shared by many distinct texts)
_CHUNK_SHINGLES = 4096  # shingles x permutations multiplied at once (4096 x 112 x 4 B = 1.8 MiB: stays in L2)

# A byte belongs to a word when it is [0-9A-Za-z_] (ASCII \w) or >= 0x80. Bytes >= 0x80 appear only in texts
# that are not ASCII, and those are first rewritten as " ".join(words(text)), so all their non-space bytes are
# word bytes. Both paths therefore split exactly like words().
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[ord(c) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"]] = True
_WORD_BYTE[0x80:] = True

_BYTE_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)  # the low n bytes
_C1, _C2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S32, _S33 = np.uint64(32), np.uint64(33)


def words(text: str) -> list[str]:
    r"""The casefolded ``\w+`` tokens of ``text``: the words shingles are made of."""
    return _WORD.findall(text.casefold())


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two texts of Jaccard similarity ``similarity`` agree on all rows of at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def _constants(seed: int, label: str, n: int, dtype: type = np.uint64) -> np.ndarray:
    """``n`` odd constants derived from ``seed`` with BLAKE2b: the same on every machine and in every run."""
    size = np.dtype(dtype).itemsize
    digests = (hashlib.blake2b(f"kubetune.minhash/{seed}/{label}/{i}".encode(), digest_size=size) for i in range(n))
    return np.array([int.from_bytes(d.digest()) | 1 for d in digests], dtype=dtype)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> _S33
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


class _MinHasher:
    """Signatures and band keys of batches of texts, for one spec."""

    def __init__(self, spec: NearDedupSpec):
        self.shingle_size, self.bands, self.rows = spec.shingle_size, spec.bands, spec.rows
        seed = spec.seed
        self._word_mul = _constants(seed, "word", 1)[0]
        self._word_key = int(_constants(seed, "long word", 1)[0]).to_bytes(8, "little")
        self._len_mul = _constants(seed, "length", 1)[0]
        self._shingle_mul = _constants(seed, "shingle", spec.shingle_size)
        self._perm = _constants(seed, "permutation", spec.bands * spec.rows, np.uint32)[:, None]
        self._row_mul = _constants(seed, "row", spec.rows)
        self._band_add = _constants(seed, "band", spec.bands)
        self._buffer = np.empty((spec.bands * spec.rows, _CHUNK_SHINGLES), dtype=np.uint32)

    # -- words ----------------------------------------------------------------------------------------------

    def _word_hashes(self, data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """64-bit hash of each word ``data[starts[i]:ends[i]]``, from its bytes and length only.

        A word of up to 64 bytes is read as 8-byte little-endian loads (unaligned reads of the buffer at every
        word start), the last one masked to the word's length, folded as a polynomial in an odd multiplier;
        a longer word (a URL, a blob) goes through BLAKE2b. Then the length is mixed in and murmur3 finishes."""
        lengths = (ends - starts).astype(np.uint64)
        padded = np.frombuffer(data + bytes(8), dtype=np.uint8)
        loads = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes at every offset
        out = self._masked(loads[starts], lengths)
        todo = np.flatnonzero((lengths > 8) & (lengths <= 64))
        for offset in range(8, 64, 8):
            todo = todo[lengths[todo] > offset]
            if not todo.size:
                break
            chunk = self._masked(loads[starts[todo] + offset], lengths[todo] - np.uint64(offset))
            out[todo] = out[todo] * self._word_mul + chunk
        for i in np.flatnonzero(lengths > 64).tolist():
            digest = hashlib.blake2b(data[starts[i] : ends[i]], digest_size=8, key=self._word_key).digest()
            out[i] = int.from_bytes(digest, "little")
        out ^= lengths * self._len_mul
        return _fmix64(out)

    @staticmethod
    def _masked(loads: np.ndarray, remaining: np.ndarray) -> np.ndarray:
        """The first min(remaining, 8) bytes of each 8-byte load (the rest belongs to what follows the word)."""
        loads &= _BYTE_MASKS[np.minimum(remaining, np.uint64(8))]
        return loads

    def _tokenise(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word hashes of all texts, concatenated, and the number of words of each text."""
        parts = [t.lower() if t.isascii() else " ".join(words(t)) for t in texts]
        data = "\n".join(parts).encode()
        buf = np.frombuffer(data, dtype=np.uint8)
        in_word = np.zeros(len(buf) + 2, dtype=bool)
        in_word[1:-1] = _WORD_BYTE[buf]
        edges = np.flatnonzero(in_word[1:] != in_word[:-1])
        del in_word
        starts, ends = edges[0::2], edges[1::2]
        lengths = np.fromiter((len(p) if p.isascii() else len(p.encode()) for p in parts), np.int64, len(parts))
        doc_starts = np.cumsum(lengths + 1) - (lengths + 1)
        first_word = np.searchsorted(starts, doc_starts)
        counts = np.diff(first_word, append=len(starts))
        return self._word_hashes(data, starts, ends), counts

    # -- shingles and signatures ----------------------------------------------------------------------------

    def _shingles(self, word_hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes of all texts, grouped by text in order, and the number of shingles of each."""
        k, n_words = self.shingle_size, len(word_hashes)
        doc = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        parts, docs = [], []
        if n_words >= k:
            m = n_words - k + 1
            acc = word_hashes[:m] * self._shingle_mul[0]
            term = np.empty_like(acc)
            for t in range(1, k):
                acc += np.multiply(word_hashes[t : t + m], self._shingle_mul[t], out=term)
            del term
            whole = doc[:m] == doc[k - 1 :]  # the k words lie in one text
            parts.append(acc[whole])
            docs.append(doc[:m][whole])
        short = np.flatnonzero((counts > 0) & (counts < k))
        if short.size:  # a text shorter than a shingle is one shingle of all its words
            first = np.cumsum(counts)[short] - counts[short]
            acc = word_hashes[first] * self._shingle_mul[0]
            for t in range(1, k - 1):
                has = counts[short] > t
                acc[has] += word_hashes[first[has] + t] * self._shingle_mul[t]
            parts.append(acc)
            docs.append(short)
        if not parts:
            return np.empty(0, dtype=np.uint32), np.zeros(len(counts), dtype=np.int64)
        shingles, shingle_doc = np.concatenate(parts), np.concatenate(docs)
        if short.size and len(parts) == 2:
            order = np.argsort(shingle_doc, kind="stable")
            shingles, shingle_doc = shingles[order], shingle_doc[order]
        return (_fmix64(shingles) >> _S32).astype(np.uint32), np.bincount(shingle_doc, minlength=len(counts))

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(signatures, rows)``: one uint32 row of ``bands * rows`` values per text with at least one word,
        and the positions in ``texts`` of those texts."""
        shingles, per_doc = self._shingles(*self._tokenise(texts))
        rows = np.flatnonzero(per_doc)
        n_perm = len(self._perm)
        if not rows.size:
            return np.empty((0, n_perm), dtype=np.uint32), rows
        offsets = np.concatenate([[0], np.cumsum(per_doc[rows])])
        mins = np.empty((n_perm, len(rows)), dtype=np.uint32)
        d0 = 0
        while d0 < len(rows):  # a few texts at a time: the (permutations x shingles) product stays in cache
            d1 = max(d0 + 1, int(np.searchsorted(offsets, offsets[d0] + _CHUNK_SHINGLES, side="right")) - 1)
            lo, hi = int(offsets[d0]), int(offsets[d1])
            block = self._buffer[:, : hi - lo] if hi - lo <= _CHUNK_SHINGLES else None
            block = np.multiply(self._perm, shingles[lo:hi], out=block)
            np.minimum.reduceat(block, offsets[d0:d1] - lo, axis=1, out=mins[:, d0:d1])
            d0 = d1
        return np.ascontiguousarray(mins.T), rows

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """One non-zero uint64 key per (text, band): equal keys mean equal rows (up to 2**-64 collisions)."""
        banded = sigs.reshape(len(sigs), self.bands, self.rows)
        acc = np.broadcast_to(self._band_add, banded.shape[:2]).copy()
        for t in range(self.rows):
            acc += banded[:, :, t].astype(np.uint64) * self._row_mul[t]
        keys = _fmix64(acc)
        keys[keys == 0] = 1
        return keys


class _KeyTable:
    """A multimap uint64 key -> int32 value in two NumPy arrays: open addressing with linear probing, key 0
    marks a free slot. Lookups and inserts take whole arrays of keys."""

    _MAX_LOAD = 0.7

    def __init__(self, capacity: int = 1 << 12):
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._vals = np.zeros(capacity, dtype=np.int32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def nbytes(self) -> int:
        return self._keys.nbytes + self._vals.nbytes

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All matches as ``(query index, value)`` arrays."""
        mask = np.uint64(len(self._keys) - 1)
        query = np.arange(len(keys))
        slot = (keys & mask).astype(np.int64)
        found_q, found_v = [], []
        while query.size:
            at = self._keys[slot]
            hit = at == keys[query]
            if hit.any():
                found_q.append(query[hit])
                found_v.append(self._vals[slot[hit]])
            more = at != 0
            query, slot = query[more], (slot[more] + 1) & (len(self._keys) - 1)
        if not found_q:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32)
        return np.concatenate(found_q), np.concatenate(found_v)

    def insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        if (self._size + len(keys)) > self._MAX_LOAD * len(self._keys):
            capacity = len(self._keys)
            while (self._size + len(keys)) > self._MAX_LOAD * capacity:
                capacity *= 2
            old_keys, old_vals = self._keys, self._vals
            self._keys = np.zeros(capacity, dtype=np.uint64)
            self._vals = np.zeros(capacity, dtype=np.int32)
            for lo in range(0, len(old_keys), 1 << 16):  # in slices: the temporaries stay small
                used = np.flatnonzero(old_keys[lo : lo + (1 << 16)]) + lo
                self._place(old_keys[used], old_vals[used])
        self._place(keys, vals)
        self._size += len(keys)

    def _place(self, keys: np.ndarray, vals: np.ndarray) -> None:
        wrap = len(self._keys) - 1
        pending = np.arange(len(keys))
        slot = (keys & np.uint64(wrap)).astype(np.int64)
        while pending.size:
            free = self._keys[slot] == 0
            claims = np.flatnonzero(free)
            at = slot[claims]
            self._vals[at] = claims  # where several claim one free slot, one of them is written: it wins
            won = claims[self._vals[at] == claims]
            self._keys[slot[won]], self._vals[slot[won]] = keys[pending[won]], vals[pending[won]]
            placed = np.zeros(len(pending), dtype=bool)
            placed[won] = True
            slot = np.where(free, slot, (slot + 1) & wrap)  # losers retry the (now taken) slot next round
            pending, slot = pending[~placed], slot[~placed]


class NearDuplicateIndex:
    """The kept texts' signatures and band keys; :meth:`add` checks a new text against them.

    Kept texts get ids 0, 1, 2, ... in the order they were added. Texts are not stored."""

    def __init__(self, spec: NearDedupSpec):
        self.spec = spec
        self._hasher = _MinHasher(spec)
        n_perm = spec.bands * spec.rows
        self._need = int(np.ceil(spec.threshold * n_perm - 1e-9))  # equal values needed: estimate >= threshold
        self._sigs = np.zeros((1024, n_perm), dtype=np.uint16)  # low 16 bits of each value, for verification
        self._kept = 0
        self._table = _KeyTable()

    def __len__(self) -> int:
        return self._kept

    def nbytes(self) -> int:
        """Bytes held by the signatures and the band table."""
        return self._sigs.nbytes + self._table.nbytes()

    def add(self, text: str) -> int | None:
        """Index ``text`` unless it near-duplicates a text already kept. Returns None when kept (it is then
        indexed, and gets the next kept id 0,1,2,...), or the kept id of the earlier text it duplicates."""
        return self.add_batch([text])[0]

    def add_batch(self, texts: Sequence[str]) -> list[int | None]:
        """:meth:`add` for each text in order, in one vectorised pass: the same answers as one call per text."""
        return [None if m < 0 else m for m in self._add_batch(texts).tolist()]

    def _add_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Kept id of the earliest kept text each text duplicates, -1 for a text that is kept."""
        n_texts = len(texts)
        match = np.full(n_texts, -1, dtype=np.int64)
        sigs, rows = self._hasher.signatures(texts)
        keys = self._hasher.band_keys(sigs)
        sigs = sigs.astype(np.uint16)  # verification compares the low 16 bits (b-bit MinHash)
        bands = self.spec.bands
        dup = np.full(len(rows), -1, dtype=np.int64)  # per text with words: kept id matched, or -1
        indexed = np.zeros(keys.size, dtype=np.int64)  # per (text, band): kept texts already under that key

        # 1. Against the texts kept before this batch: all candidates verified at once; the smallest verified id.
        if len(self._table):
            query, kept_id = self._table.lookup(keys.ravel())
            if query.size:
                indexed = np.bincount(query, minlength=keys.size)
                pairs = np.unique((query // bands) << 32 | kept_id.astype(np.int64))
                text, kept_id = pairs >> 32, pairs & 0xFFFFFFFF
                same = self._verified(sigs, text, self._sigs, kept_id)
                text, kept_id = text[same], kept_id[same]
                first = np.unique(text, return_index=True)[1]
                dup[text[first]] = kept_id[first]

        # 2. Within the batch: a text that shares no band key with another text of the batch is kept; the others
        # are resolved in order against the batch's texts kept before them.
        live = np.flatnonzero(dup < 0)
        local = np.full(len(rows), -1, dtype=np.int64)  # row of the batch text matched within the batch
        if live.size > 1:
            entries = (live[:, None] * bands + np.arange(bands)).ravel()
            _, group, sizes = np.unique(keys.ravel()[entries], return_inverse=True, return_counts=True)
            shared = sizes[group] > 1
            if shared.any():
                self._resolve_in_batch(entries[shared] // bands, group[shared], indexed[entries[shared]], sigs, local)

        # 3. Ids in text order (texts without words are kept too), then index the new kept texts: under each of
        # their band keys, unless _BUCKET_CAP kept texts are there already.
        kept_mask = np.ones(n_texts, dtype=bool)
        kept_mask[rows[(dup >= 0) | (local >= 0)]] = False
        new_ids = self._kept + np.cumsum(kept_mask) - 1
        match[rows] = dup
        in_batch = np.flatnonzero(local >= 0)
        match[rows[in_batch]] = new_ids[rows[local[in_batch]]]
        kept_rows = np.flatnonzero(kept_mask[rows])
        self._store(sigs[kept_rows], new_ids[rows[kept_rows]], int(kept_mask.sum()))
        entries = (kept_rows[:, None] * bands + np.arange(bands)).ravel()
        new_keys = keys.ravel()[entries]
        order = np.argsort(new_keys, kind="stable")  # rank of each entry among the batch's kept with its key
        run_start = np.flatnonzero(np.diff(new_keys[order], prepend=new_keys[order][:1] - 1))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - np.repeat(run_start, np.diff(run_start, append=len(order)))
        room = indexed[entries] + rank < _BUCKET_CAP
        self._table.insert(new_keys[room], new_ids[rows[entries[room] // bands]].astype(np.int32))
        return match

    def _verified(self, sigs_a: np.ndarray, a: np.ndarray, sigs_b: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether ``sigs_a[a[i]]`` and ``sigs_b[b[i]]`` agree on enough values, a slice of pairs at a time."""
        out = np.empty(len(a), dtype=bool)
        for lo in range(0, len(a), 1 << 14):
            hi = lo + (1 << 14)
            out[lo:hi] = np.count_nonzero(sigs_a[a[lo:hi]] == sigs_b[b[lo:hi]], axis=1) >= self._need
        return out

    def _resolve_in_batch(
        self, entry_row: np.ndarray, entry_group: np.ndarray, indexed: np.ndarray, sigs: np.ndarray, local: np.ndarray
    ) -> None:
        """In order, each text that shares a band key with another of the batch, against the batch's texts kept
        before it and indexed under that key; sets ``local[row]`` to the earliest verified one."""
        groups_of: dict[int, list[int]] = {}
        room: dict[int, int] = {}
        for g, r, n in zip(entry_group.tolist(), entry_row.tolist(), indexed.tolist(), strict=True):
            groups_of.setdefault(r, []).append(g)
            room[g] = _BUCKET_CAP - n
        kept_with: dict[int, list[int]] = {}  # key group -> rows kept so far and indexed under that key
        for r in sorted(groups_of):
            candidates = {m for g in groups_of[r] for m in kept_with.get(g, ())}
            if candidates:
                earlier = np.array(sorted(candidates))
                same = self._verified(sigs, earlier, sigs, np.full(len(earlier), r))
                if same.any():
                    local[r] = earlier[np.argmax(same)]
                    continue
            for g in groups_of[r]:
                indexed_here = kept_with.setdefault(g, [])
                if len(indexed_here) < room[g]:
                    indexed_here.append(r)

    def _store(self, sigs: np.ndarray, ids: np.ndarray, n_new: int) -> None:
        total = self._kept + n_new
        if total > len(self._sigs):
            grown = np.zeros((max(total, len(self._sigs) * 3 // 2), self._sigs.shape[1]), dtype=np.uint16)
            grown[: self._kept] = self._sigs[: self._kept]
            self._sigs = grown
        self._sigs[ids] = sigs  # texts without words keep a row of zeros, never looked up
        self._kept = total


def signatures(texts: Sequence[str], spec: NearDedupSpec) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (uint32, ``bands * rows`` per text) of the texts that have words, and their positions."""
    return _MinHasher(spec).signatures(texts)


def find_near_duplicates(texts: Sequence[str], spec: NearDedupSpec) -> list[int | None]:
    """For each text in order: None if kept, else the position in ``texts`` of the earliest kept text it
    near-duplicates. The first of a group of near duplicates is kept. Texts are processed in batches."""
    index = NearDuplicateIndex(spec)
    kept_at = np.empty(len(texts), dtype=np.int64)  # kept id -> position
    out = np.empty(len(texts), dtype=np.int64)
    chars = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    start = 0
    while start < len(texts):
        stop = int(np.searchsorted(chars, chars[start] + _BATCH_CHARS, side="right"))
        stop = min(max(stop, start + 1), start + _BATCH_DOCS)
        batch = texts[start:stop]
        match = index._add_batch(batch)
        kept = match < 0
        n_before = len(index) - int(kept.sum())
        kept_at[n_before : len(index)] = start + np.flatnonzero(kept)
        out[start:stop] = np.where(kept, -1, kept_at[np.maximum(match, 0)])
        start = stop
    return [None if m < 0 else m for m in out.tolist()]
