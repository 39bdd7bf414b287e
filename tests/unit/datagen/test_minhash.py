"""Near-duplicate detection: MinHash over word shingles, LSH banding and verification."""

from __future__ import annotations

import numpy as np
import pytest

from kubetune.api.v1alpha1.datasetbuild import NearDedupSpec
from kubetune.datagen import minhash
from kubetune.datagen.minhash import (
    NearDuplicateIndex,
    candidate_probability,
    find_near_duplicates,
    signatures,
    words,
)

DEFAULTS = NearDedupSpec()


def _vocab(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return sorted({"".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(n)})


VOCAB = _vocab(6000)


def _texts(n: int, length: int = 200, seed: int = 0) -> list[list[str]]:
    """Texts of `length` words drawn with Zipfian frequencies, as word lists."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(VOCAB) + 1)
    p /= p.sum()
    return [[VOCAB[i] for i in rng.choice(len(VOCAB), size=length, p=p)] for _ in range(n)]


def _edit(ws: list[str], n: int, seed: int) -> list[str]:
    """`ws` with `n` words, spread out, replaced by words from outside the vocabulary."""
    out = list(ws)
    for k, i in enumerate(np.linspace(10, len(ws) - 10, n).astype(int)):
        out[i] = f"edit{seed}x{k}"
    return out


def _ids(n: int, start: int = 0) -> list[str]:
    """`n` distinct words: every shingle of a text built from them is distinct, so its Jaccard is exact."""
    return [f"w{i}" for i in range(start, start + n)]


def _shingle_jaccard(a: list[str], b: list[str], k: int = 5) -> float:
    sa = {tuple(a[i : i + k]) for i in range(len(a) - k + 1)}
    sb = {tuple(b[i : i + k]) for i in range(len(b) - k + 1)}
    return len(sa & sb) / len(sa | sb)


# -- tokens --------------------------------------------------------------------------------------------------


def test_words_are_casefolded_word_tokens():
    assert words("Hello, WORLD! Straße café_1 -- x2") == ["hello", "world", "strasse", "café_1", "x2"]
    assert words("  ...  ") == []


@pytest.mark.parametrize(
    "text",
    [
        "Plain ASCII text, with punctuation; and_underscores 42 times.",
        "Ünïcödé wörds — “quoted” naïve café ΣΊΣΥΦΟΣ straße 東京 tab\tnew\nline",
        "mixed-ascii\x00nul and\u00a0nbsp and emoji 🙂 ok",
        "",
    ],
)
def test_vectorised_tokeniser_splits_like_words(text):
    """The byte-level tokeniser of the batch path finds exactly words(text), with the same word hashes."""
    hasher = minhash._MinHasher(DEFAULTS)
    hashes, counts = hasher._tokenise([text])
    assert counts.tolist() == [len(words(text))]
    one_by_one = [hasher._tokenise([w])[0][0] for w in words(text)]
    assert hashes.tolist() == [int(h) for h in one_by_one]


def test_word_hashes_depend_on_the_word_only():
    """Words of every length (one 8-byte load, several, BLAKE2b past 64 bytes) hash the same in any context."""
    hasher = minhash._MinHasher(DEFAULTS)
    vocab = ["x" * n for n in (1, 7, 8, 9, 16, 17, 63, 64, 65, 200)] + ["xy" * 4, "yx" * 4, "é" * 5]
    alone = [int(hasher._tokenise([w])[0][0]) for w in vocab]
    assert len(set(alone)) == len(vocab)
    context, counts = hasher._tokenise([" ".join(vocab), "-".join(reversed(vocab)) + " ab"])
    assert counts.tolist() == [len(vocab), len(vocab) + 1]
    assert context[: len(vocab)].tolist() == alone
    assert context[len(vocab) : 2 * len(vocab)].tolist() == alone[::-1]
    assert set(hasher._tokenise(["ab " + "z" * 100_000 + " ab"])[0].tolist()[::2]) == {int(context[-1])}


# -- finding duplicates --------------------------------------------------------------------------------------


def test_exact_and_lightly_edited_copies_are_found_unrelated_texts_are_not():
    originals = _texts(40, seed=1)
    texts = [" ".join(ws) for ws in originals]
    texts += [" ".join(originals[i]).upper() + "!" for i in range(10)]  # same words: exact copies
    texts += [" ".join(_edit(originals[i], 2, seed=i)) for i in range(10, 30)]  # 2 of 200 words changed
    result = find_near_duplicates(texts, DEFAULTS)
    assert result[:40] == [None] * 40, "unrelated texts flagged"
    assert result[40:50] == list(range(10))
    assert result[50:70] == list(range(10, 30))


def test_unrelated_texts_with_a_common_vocabulary_are_kept():
    texts = [" ".join(ws) for ws in _texts(300, length=120, seed=2)]
    assert find_near_duplicates(texts, DEFAULTS) == [None] * 300


def test_first_occurrence_is_kept_and_positions_are_returned():
    a, b, c = (" ".join(ws) for ws in _texts(3, seed=3))
    texts = [a, "", b, a, c, b.replace(" ", "  "), a]
    assert find_near_duplicates(texts, DEFAULTS) == [None, None, None, 0, None, 2, 0]
    index = NearDuplicateIndex(DEFAULTS)
    assert [index.add(t) for t in texts] == [None, None, None, 0, None, 2, 0]  # kept ids: a=0, ""=1, b=2
    assert len(index) == 4


def test_short_and_empty_texts():
    spec = DEFAULTS  # shingles of 5 words: shorter texts are one shingle of all their words
    texts = ["", "   ", "?!", "two words", "Two, WORDS.", "two other", "one", "one", ""]
    assert find_near_duplicates(texts, spec) == [None, None, None, None, 3, None, None, 6, None]


def test_pair_at_half_similarity_is_not_flagged_with_defaults():
    a, b = _ids(300), _ids(300, start=100)
    assert _shingle_jaccard(a, b) == pytest.approx(0.495, abs=0.001)
    assert find_near_duplicates([" ".join(a), " ".join(b)], DEFAULTS) == [None, None]
    # more bands of fewer rows make it a candidate, and a threshold below 0.5 confirms it
    loose = NearDedupSpec(bands=56, rows=2, threshold=0.3)
    assert find_near_duplicates([" ".join(a), " ".join(b)], loose) == [None, 0]


def test_threshold_is_respected():
    a, b = _ids(200), _ids(200, start=10)  # J = 186/206 = 0.90
    pair = [" ".join(a), " ".join(b)]
    assert find_near_duplicates(pair, DEFAULTS) == [None, 0]
    assert find_near_duplicates(pair, NearDedupSpec(threshold=0.97)) == [None, None]


def test_a_text_is_compared_with_kept_texts_only():
    """B duplicates A, C duplicates B but not A: B is dropped, so C is kept (no transitive chains)."""
    spec = NearDedupSpec(shingle_size=1, bands=128, rows=4, threshold=0.75)  # 512 values: sd of J ~ 0.02
    a, b, c = _ids(100), _ids(100, start=10), _ids(100, start=20)  # J(a,b)=J(b,c)=0.82, J(a,c)=0.67
    assert find_near_duplicates([" ".join(a), " ".join(b), " ".join(c)], spec) == [None, 0, None]


# -- the estimate and the S-curve ----------------------------------------------------------------------------


def test_candidate_probability_is_the_lsh_s_curve():
    p = [candidate_probability(s, 14, 8) for s in (0.5, 0.65, 0.75, 0.8, 0.9)]
    assert p == pytest.approx([0.053, 0.365, 0.772, 0.924, 0.9996], abs=0.0005)
    assert p == sorted(p)
    p = [candidate_probability(s, 28, 4) for s in (0.4, 0.5, 0.6, 0.7)]  # the same 112 values in bands of 4
    assert p == pytest.approx([0.516, 0.836, 0.9795, 0.9995], abs=0.0005)
    assert candidate_probability(1.0, 14, 8) == 1.0
    assert candidate_probability(0.0, 14, 8) == 0.0


def test_share_of_equal_values_estimates_jaccard_without_bias():
    spec = NearDedupSpec(shingle_size=1)
    errors = []
    for trial in range(150):
        n, shared = 150, 120  # J = 120 / 180 = 0.667
        a = _ids(n, start=1000 * trial)
        b = a[:shared] + _ids(n - shared, start=1000 * trial + 500)
        sigs, _ = signatures([" ".join(a), " ".join(b)], spec)
        errors.append(np.mean(sigs[0] == sigs[1]) - shared / (2 * n - shared))
    sd = np.sqrt(2 / 3 * 1 / 3 / 112)
    assert abs(np.mean(errors)) < 3 * sd / np.sqrt(150)
    assert 0.75 * sd < np.std(errors) < 1.25 * sd  # like 112 independent permutations


# -- determinism, batching, streaming ------------------------------------------------------------------------


def test_signatures_are_fixed_across_processes_and_machines():
    """Constants come from BLAKE2b, not Python's salted hash(): these values hold in any process. If the
    hashing is changed on purpose, update them (and know that stored signatures no longer match)."""
    sigs, rows = signatures(["The quick brown fox jumps over the lazy dog"], DEFAULTS)
    assert rows.tolist() == [0]
    assert sigs.shape == (1, 112) and sigs.dtype == np.uint32
    assert sigs[0, :4].tolist() == [301799894, 149477062, 1519854989, 826714991]
    other, _ = signatures(["The quick brown fox jumps over the lazy dog"], NearDedupSpec(seed=2))
    assert np.mean(other[0] == sigs[0]) < 0.05


def test_same_result_for_any_batch_size_and_for_streaming(monkeypatch):
    originals = _texts(30, length=80, seed=4)
    rng = np.random.default_rng(5)
    texts = [" ".join(ws) for ws in originals]
    for i in rng.integers(0, 30, size=30):  # copies, copies of copies, edited copies, interleaved
        texts.insert(int(rng.integers(i + 1, len(texts) + 1)), " ".join(_edit(originals[i], int(i) % 3, int(i))))
    texts.insert(7, "")
    expected = find_near_duplicates(texts, DEFAULTS)
    assert sum(m is not None for m in expected) >= 25
    assert find_near_duplicates(texts, DEFAULTS) == expected
    for batch in (1, 3, 16):
        monkeypatch.setattr(minhash, "_BATCH_DOCS", batch)
        assert find_near_duplicates(texts, DEFAULTS) == expected
    monkeypatch.setattr(minhash, "_BATCH_DOCS", 4096)
    monkeypatch.setattr(minhash, "_BATCH_CHARS", 2000)  # batches cut by length: 3-4 texts each
    assert find_near_duplicates(texts, DEFAULTS) == expected
    index = NearDuplicateIndex(DEFAULTS)
    positions = []  # kept id -> position
    streamed = []
    for pos, text in enumerate(texts):
        match = index.add(text)
        streamed.append(None if match is None else positions[match])
        if match is None:
            positions.append(pos)
    assert streamed == expected
    assert len(index) == expected.count(None)


def test_band_keys_shared_by_many_distinct_texts_are_capped(monkeypatch):
    """A key shared by more than _BUCKET_CAP kept texts (boilerplate) indexes only the first of them: candidates
    stay bounded, copies are still found through their other bands, and batches still agree with streaming."""
    spec = NearDedupSpec(shingle_size=1, bands=32, rows=1, threshold=0.9)
    common = _ids(50, start=10_000)
    texts = [" ".join(common + _ids(50, start=100 * i)) for i in range(60)]  # J = 1/3 between any two
    texts += [texts[i] for i in (0, 20, 45, 59)]  # exact copies of texts indexed before and after the cap
    expected = [None] * 60 + [0, 20, 45, 59]
    index = NearDuplicateIndex(spec)
    assert [index.add(t) for t in texts] == expected
    q, _ = index._table.lookup(index._hasher.band_keys(signatures(texts[:1], spec)[0]).ravel())
    assert np.bincount(q).max() == minhash._BUCKET_CAP  # the keys of the common words hold 16 texts, not 60
    for batch in (1, 7, 64):
        monkeypatch.setattr(minhash, "_BATCH_DOCS", batch)
        assert find_near_duplicates(texts, spec) == expected
    batched = NearDuplicateIndex(spec)
    assert batched.add_batch(texts) == expected

    def entries(ix: NearDuplicateIndex) -> list[tuple[int, int]]:
        used = ix._table._keys != 0
        return sorted(zip(ix._table._keys[used].tolist(), ix._table._vals[used].tolist(), strict=True))

    assert entries(batched) == entries(index)  # the same texts indexed under the same keys


def test_memory_grows_with_kept_texts_not_with_their_length():
    index = NearDuplicateIndex(DEFAULTS)
    index.add_batch([" ".join(ws) for ws in _texts(50, length=2000, seed=6)])
    assert len(index) == 50
    assert index.nbytes() == 1024 * 112 * 2 + 4096 * 12  # the initial arrays: 50 long texts did not grow them


def test_key_table_is_a_multimap():
    rng = np.random.default_rng(7)
    table = minhash._KeyTable(capacity=16)
    keys = rng.integers(1, 2**63, size=3000, dtype=np.uint64)
    keys[::7] = keys[0]  # one key with many values
    for lo in range(0, 3000, 500):  # several inserts: the table grows
        table.insert(keys[lo : lo + 500], np.arange(lo, lo + 500, dtype=np.int32))
    queries = np.concatenate([keys[:50], rng.integers(1, 2**63, size=50, dtype=np.uint64)])
    q, v = table.lookup(queries)
    found = sorted(zip(q.tolist(), v.tolist(), strict=True))
    expected = sorted((qi, i) for qi, key in enumerate(queries.tolist()) for i in np.flatnonzero(keys == key).tolist())
    assert found == expected
    assert len(table) == 3000
