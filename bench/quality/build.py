"""Assemble the labelled curation benchmark ``bench/quality/labelled.jsonl`` from the hand-written inputs.

Inputs (all in this folder):

* ``passage_specs.json``: which passages to cut out of installed packages' READMEs (METADATA long descriptions),
  as start/end anchors in the cleaned text (``extract.py``), plus a topic group per passage.
* ``pairs.jsonl``: hand-written, correct instruction/answer pairs grounded in one passage each. Every pair is used
  exactly once: as a good row, or as the raw material of one script-made bad row (wrong_source, truncated,
  context_reference, word_salad), so no bad row repeats a good row's text.
* ``contradictions.jsonl``, ``paraphrases.jsonl``, ``refusals.jsonl``, ``word_salad.jsonl``,
  ``context_references.jsonl``: hand-written bad rows.

Outputs: ``passages.jsonl``, ``labelled.jsonl`` and ``SOURCES.md``. Everything is seeded; re-running gives the same
bytes as long as the installed packages are the same versions (``--reuse-passages`` reads ``passages.jsonl``
instead of the site-packages, for another machine).

    .venv/bin/python bench/quality/build.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from extract import load_description, passage

HERE = Path(__file__).resolve().parent
SEED = 20250607

# how many pool pairs each script-made kind consumes; the rest of the pool stays good
N_WRONG_SOURCE = 42
N_TRUNCATED = 42
N_CONTEXT_SCRIPT = 26
N_SALAD_POOL = 8  # normal instruction from the pool, word-salad answer
N_SALAD_ONLY = 16  # word-salad instruction and answer

KINDS = [
    "good",
    "wrong_source",
    "contradiction",
    "word_salad",
    "context_reference",
    "refusal",
    "truncated",
    "paraphrase_duplicate",
]

# topic families: wrong_source never moves a pair to a passage of the same family
FAMILY = {
    "http": "net",
    "web": "net",
    "async": "net",
    "serialization": "data",
    "schema": "data",
    "classes": "data",
    "ml": "ml",
    "science": "ml",
}

CONTEXT_RE = re.compile(
    r"\b(the|this|that|given|provided|following) (text|passage|document|excerpt|article|context|paragraph|section|"
    r"readme)\b|\bthe above\b|\babove[.?):]|\b(text|passage|document|excerpt|paragraph|section) above\b|"
    r"\b(mentioned|described|listed|given) (above|here)\b|\bexample given\b|\bjust read\b|\bsummari[sz]e\b",
    re.I,
)
REFUSAL_RE = re.compile(
    r"sorry|cannot|can't|unable|not able|don't know|do not have|don't have|no information|not sure|"
    r"outside the scope|beyond my|don't understand|language model|as an ai|apologi",
    re.I,
)
REFUSAL_START_RE = re.compile(
    r"^(I'm sorry|Sorry|I apologi|As an AI|As a language model|I cannot|I can't|I don't|I do not|I am not|I'm not|"
    r"Unfortunately|There is no information)"
)
NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


# --- io


def read_jsonl(name: str) -> list[dict]:
    with open(HERE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_passages(reuse: bool) -> list[dict]:
    specs = json.loads((HERE / "passage_specs.json").read_text(encoding="utf-8"))
    if reuse:
        stored = {p["passage_id"]: p for p in read_jsonl("passages.jsonl")}
        out = [dict(stored[s["passage_id"]]) for s in specs]
    else:
        out, cache = [], {}
        for s in specs:
            if s["package"] not in cache:
                cache[s["package"]] = load_description(s["package"])
            d = cache[s["package"]]
            text = passage(d.text, s["start"], s["end"])
            out.append(
                {"passage_id": s["passage_id"], "package": d.package, "version": d.version, "license": d.license}
                | {"text": text}
            )
    for s, p in zip(specs, out, strict=True):
        assert 400 <= len(p["text"]) <= 1500, (p["passage_id"], len(p["text"]))
        p["group"] = s["group"]
    assert len({p["passage_id"] for p in out}) == len(out)
    return out


# --- text helpers

# fmt: off
_LOWER_OK_Q = {
    "what", "how", "which", "why", "when", "where", "who", "does", "do", "is", "are", "can", "should", "will",
}
_LOWER_OK_A = {
    "the", "it", "a", "an", "this", "they", "you", "each", "its", "on", "in", "for", "with", "since", "once", "by",
    "adding", "use", "set", "convert", "compiling", "pickling", "many", "functionality", "database", "starting",
    "there", "only", "both", "recent", "models", "data", "application", "subclass", "create", "define", "pass",
    "install", "maintenance",
}
# fmt: on


def lower_first(text: str, allowed: set[str]) -> str | None:
    first = text.split(" ", 1)[0]
    if first.lower() in allowed and first[:1].isupper():
        return text[0].lower() + text[1:]
    return None


def words_of(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]", text)


def content_words(text: str) -> set[str]:
    stop = {"this", "that", "with", "from", "have", "into", "than", "they", "their", "which", "what", "about", "only"}
    return {w.lower() for w in words_of(text) if len(w) >= 4 and w.lower() not in stop}


def sentence_count(text: str) -> int:
    return len(re.findall(r"[.!?](?=\s+[A-Z0-9]|$)", text))


# --- script-made bad rows


def truncate(answer: str, style: str, rng: random.Random) -> str:
    words = answer.split(" ")
    n = len(words)
    if style == "few_words":
        out = " ".join(words[: rng.randint(2, 4)])
    elif style == "mid_word":
        candidates = [i for i in range(int(n * 0.3), int(n * 0.85)) if len(re.sub(r"\W", "", words[i])) >= 6]
        if not candidates:
            return truncate(answer, "mid_sentence", rng)
        i = rng.choice(candidates)
        word = re.sub(r"\W+$", "", words[i])
        out = " ".join([*words[:i], word[: rng.randint(2, len(word) - 2)]])
    else:
        k = rng.randint(max(3, int(n * 0.3)), max(3, int(n * 0.75)))
        while k < n - 1 and re.search(r"[.!?]$", words[k - 1]):
            k += 1
        out = " ".join(words[:k])
    out = out.rstrip(" .!?")
    assert out != answer and not re.search(r"[.!?]$", out), (answer, out)
    return out


_Q_PREFIX = [
    "According to the text, {q}",
    "Based on the passage above, {q}",
    "In the document, {q}",
    "From the provided context, {q}",
    "Using only the information in the excerpt, {q}",
    "As described in the article, {q}",
    "According to the given passage, {q}",
]
_Q_WRAP = [
    "{Q} Answer using the text above.",
    "Read the passage and answer: {Q}",
    "{Q} Refer to the document.",
    "{Q} Use the context provided.",
    "Based on what you just read in the text: {Q}",
    "{Q} (See the excerpt above.)",
]
_A_PREFIX = [
    "The text states that {a}",
    "According to the passage, {a}",
    "As mentioned in the document, {a}",
    "The passage explains that {a}",
    "As the excerpt says, {a}",
]


def context_reference(pair: dict, rng: random.Random) -> tuple[str, str]:
    q, a = pair["instruction"], pair["answer"]
    if rng.random() < 0.6:
        low = lower_first(q, _LOWER_OK_Q)
        if low is not None and rng.random() < 0.6:
            return rng.choice(_Q_PREFIX).format(q=low), a
        return rng.choice(_Q_WRAP).format(Q=q), a
    m = re.match(r"(Yes|No|Not necessarily)\. (.*)", a, re.S)
    head, body = (m.group(1) + ". ", m.group(2)) if m else ("", a)
    body = lower_first(body, _LOWER_OK_A) or body
    return q, head + rng.choice(_A_PREFIX).format(a=body)


# fmt: off
_JARGON = [
    "Engine", "Factory", "Handler", "Immutable", "Decompose", "Syntax", "Feature", "Manager", "Proxy", "Able", "Bac",
    "Buffer", "Token", "Schema", "Adapter", "Commit", "Help", "Edit", "Shift", "Noat", "Rws", "Impl", "Base",
]
# fmt: on
_CJK = (
    "笏蒸喻文数据模型的是在了不和有大这主中人上为们地个用工时要动国产以我到他会作来分生对于学下级就年阶义"
    "发成部民可出能方进同行面说种过命度"
)


def _camel(words: list[str]) -> str:
    return "".join(w[:1].upper() + w[1:].lower() for w in words)


def identifier_run(text: str, rng: random.Random) -> str:
    vocab = sorted({w for w in words_of(text) if len(w) >= 3})
    parts = rng.sample(vocab, k=min(len(vocab), rng.randint(3, 6))) + rng.sample(_JARGON, k=rng.randint(1, 3))
    rng.shuffle(parts)
    core = _camel(parts)
    if rng.random() < 0.4:
        core += f"{rng.randrange(16**6):06X}"
    return rng.choice(["[{}]", "{}", "`{}`", "{}()", "[[{}]]", "<{}>"]).format(core)


def markup_soup(text: str, rng: random.Random) -> str:
    vocab = sorted({w.lower() for w in words_of(text) if len(w) >= 3})

    def cjk(k: int) -> str:
        return "".join(rng.choice(_CJK) for _ in range(k))

    w = rng.sample(vocab, k=min(len(vocab), 6))
    hexes = f"{rng.randrange(16**10):010X}{rng.randrange(10**3):03d}"
    templates = [
        f"[{cjk(3)}][{cjk(2)}]](/.{w[0][:6]}/{w[1]}{w[2]}_{w[3][:3]}{_camel(w[4:6])}{hexes}",
        f"![{w[0]}]({w[1]}.{w[2]}/{cjk(2)}#L{rng.randint(10, 999)})]] **{_camel(w[3:5])}** |||| {hexes}",
        f"<{w[0]}>{cjk(4)}</{w[1]}> [{_camel(w[2:4])}]: #{w[4]}_{w[5]} ```{cjk(2)}``` ]]",
        f"{cjk(2)}{_camel(w[0:2])}::{w[2]}[[{w[3]}]]({cjk(3)}) -- {hexes} /{w[4]}/{w[5]}.md)",
    ]
    return rng.choice(templates)


def shuffled_words(text: str, rng: random.Random) -> str:
    tokens = re.sub(r"\s+", " ", text).split(" ")
    k = rng.randint(18, 32)
    start = rng.randrange(max(1, len(tokens) - k))
    window = [t.strip(".,;:()") for t in tokens[start : start + k]]
    window = [t for t in window if t]
    rng.shuffle(window)
    out = " ".join(window)
    return out[:1].upper() + out[1:] + "."


def repetition_loop(text: str, rng: random.Random) -> str:
    tokens = [t.strip(".,;:()") for t in re.sub(r"\s+", " ", text).split(" ")]
    tokens = [t for t in tokens if t]
    k = rng.randint(2, 4)
    start = rng.randrange(len(tokens) - k)
    phrase = tokens[start : start + k]
    reps = rng.randint(6, 11)
    out = " ".join(phrase * reps)
    return out[:1].upper() + out[1:]


class Markov:
    """Bigram chain over all passages: fluent-looking, meaningless text."""

    def __init__(self, texts: list[str]):
        self.next: dict[str, list[str]] = defaultdict(list)
        self.starts: list[str] = []
        self.ngrams: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = re.sub(r"\s+", " ", text).split(" ")
            for a, b in itertools.pairwise(tokens):
                self.next[a].append(b)
            self.starts += [
                t for i, t in enumerate(tokens) if t[:1].isupper() and (i == 0 or tokens[i - 1][-1] in ".!?")
            ]
            self.ngrams |= {tuple(tokens[i : i + 6]) for i in range(len(tokens) - 5)}

    def sentence(self, rng: random.Random) -> str:
        for _ in range(200):
            out = [rng.choice(self.starts)]
            while len(out) < 45 and self.next.get(out[-1]):
                out.append(rng.choice(self.next[out[-1]]))
                if len(out) >= 20 and out[-1][-1] in ".!?":
                    break
            if len(out) < 15 or any(tuple(out[i : i + 6]) in self.ngrams for i in range(len(out) - 5)):
                continue
            text = " ".join(out)
            return text if text[-1] in ".!?" else text.rstrip(",;:") + "."
        raise RuntimeError("no Markov sentence without a 6-gram copied from the passages")


def salad_answer(text: str, markov: Markov, style: str, rng: random.Random) -> str:
    if style == "identifiers":
        return identifier_run(text, rng)
    if style == "markup":
        return markup_soup(text, rng)
    if style == "shuffled":
        return shuffled_words(text, rng)
    if style == "loop":
        return repetition_loop(text, rng)
    return markov.sentence(rng)


def salad_instruction(text: str, rng: random.Random) -> str:
    style = rng.choice(["shuffled", "identifiers", "markup"])
    if style == "shuffled":
        words = [w for w in words_of(text) if len(w) >= 3]
        start = rng.randrange(max(1, len(words) - 10))
        window = words[start : start + rng.randint(6, 10)]
        rng.shuffle(window)
        lead = rng.choice(["What", "How", "Which", "Why", "Is"])
        return f"{lead} {' '.join(w.lower() for w in window)}?"
    if style == "identifiers":
        return identifier_run(text, rng) + rng.choice(["?", " ??", " ?!", ""])
    return markup_soup(text, rng)


def pick_wrong_source(pair, passages, by_id, used: Counter, rng: random.Random) -> dict:
    own = by_id[pair["passage_id"]]
    fam = FAMILY.get(own["group"], own["group"])
    name = own["package"].lower().replace("-", "")
    answer_words = content_words(pair["answer"] + " " + pair["instruction"])
    ok = []
    for p in passages:
        if FAMILY.get(p["group"], p["group"]) == fam:
            continue
        low = p["text"].lower()
        if name in low.replace("-", "") or own["package"].lower() in low:
            continue
        overlap = len(answer_words & content_words(p["text"])) / max(1, len(answer_words))
        if overlap <= 0.3:
            ok.append(p)
    assert ok, pair
    least = min(used[p["passage_id"]] for p in ok)
    target = rng.choice([p for p in ok if used[p["passage_id"]] == least])
    used[target["passage_id"]] += 1
    return target


# --- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse-passages", action="store_true", help="read passages.jsonl instead of site-packages")
    args = ap.parse_args()
    rng = random.Random(SEED)

    passages = build_passages(args.reuse_passages)
    by_id = {p["passage_id"]: p for p in passages}
    write_jsonl("passages.jsonl", [{k: v for k, v in p.items() if k != "group"} for p in passages])

    pairs = read_jsonl("pairs.jsonl")
    for n, p in enumerate(pairs):
        assert p["passage_id"] in by_id, p
        p["key"] = n
    by_instruction = {p["instruction"]: p for p in pairs}
    assert len(by_instruction) == len(pairs), "duplicate instruction in pairs.jsonl"

    paraphrases = read_jsonl("paraphrases.jsonl")
    forced_good = {by_instruction[p["duplicate_of_instruction"]]["key"] for p in paraphrases}
    assert len(forced_good) == len(paraphrases), "two paraphrases of the same pair"

    # role assignment: every passage keeps at least one good pair
    role: dict[int, str] = {k: "good" for k in forced_good}
    for pid in by_id:
        if not any(role.get(p["key"]) == "good" for p in pairs if p["passage_id"] == pid):
            role[rng.choice([p for p in pairs if p["passage_id"] == pid])["key"]] = "good"
    free = [p for p in pairs if p["key"] not in role]
    rng.shuffle(free)
    long_enough = [p for p in free if len(p["answer"].split()) >= 10]
    for p in long_enough[:N_TRUNCATED]:
        role[p["key"]] = "truncated"
    free = [p for p in free if p["key"] not in role]
    quotas = [("wrong_source", N_WRONG_SOURCE), ("context_reference", N_CONTEXT_SCRIPT), ("salad", N_SALAD_POOL)]
    for name, n in quotas:
        for p in free[:n]:
            role[p["key"]] = name
        free = free[n:]
    for p in free:
        role[p["key"]] = "good"

    def row(kind: str, instruction: str, answer: str, pid: str, origin: str, key: int | None = None) -> dict:
        p = by_id[pid]
        r = {"label": "good" if kind == "good" else "bad", "kind": kind, "instruction": instruction, "answer": answer}
        return r | {"source": p["text"], "source_id": pid, "package": p["package"], "_origin": origin, "_key": key}

    rows: list[dict] = []
    markov = Markov([p["text"] for p in passages])
    used_targets: Counter = Counter()
    trunc_styles = ["mid_sentence", "mid_sentence", "mid_word", "few_words", "mid_sentence"]
    salad_styles = ["markov", "identifiers", "shuffled", "markup", "loop", "markov"]
    for n, p in enumerate(pairs):
        k, pid = role[p["key"]], p["passage_id"]
        if k == "good":
            rows.append(row("good", p["instruction"], p["answer"], pid, "pairs.jsonl", key=p["key"]))
        elif k == "truncated":
            cut = truncate(p["answer"], trunc_styles[n % len(trunc_styles)], rng)
            rows.append(row("truncated", p["instruction"], cut, pid, "script:truncate"))
        elif k == "wrong_source":
            target = pick_wrong_source(p, passages, by_id, used_targets, rng)
            rows.append(row("wrong_source", p["instruction"], p["answer"], target["passage_id"], "script:wrong_source"))
        elif k == "context_reference":
            q, a = context_reference(p, rng)
            rows.append(row("context_reference", q, a, pid, "script:context_reference"))
        elif k == "salad":
            style = salad_styles[n % len(salad_styles)]
            answer = salad_answer(by_id[pid]["text"], markov, style, rng)
            rows.append(row("word_salad", p["instruction"], answer, pid, f"script:salad_answer:{style}"))
    salad_pids = sorted(by_id)
    rng.shuffle(salad_pids)
    for n, pid in enumerate(salad_pids[:N_SALAD_ONLY]):
        style = salad_styles[n % len(salad_styles)]
        text = by_id[pid]["text"]
        rows.append(
            row("word_salad", salad_instruction(text, rng), salad_answer(text, markov, style, rng), pid, "script:salad")
        )

    hand = [
        ("contradiction", "contradictions.jsonl"),
        ("refusal", "refusals.jsonl"),
        ("word_salad", "word_salad.jsonl"),
        ("context_reference", "context_references.jsonl"),
    ]
    for kind, name in hand:
        for h in read_jsonl(name):
            rows.append(row(kind, h["instruction"], h["answer"], h["passage_id"], name))
    for h in paraphrases:
        orig = by_instruction[h["duplicate_of_instruction"]]
        dup = row("paraphrase_duplicate", h["instruction"], h["answer"], orig["passage_id"], "paraphrases.jsonl")
        dup["_dup_of_key"] = orig["key"]
        rows.append(dup)

    check(rows, by_id, pairs)

    # shuffle; each paraphrase comes after its original; then ids
    rng.shuffle(rows)
    pos_of_key = {r["_key"]: i for i, r in enumerate(rows) if r["kind"] == "good"}
    for i, r in enumerate(rows):
        if r["kind"] == "paraphrase_duplicate":
            j = pos_of_key[r["_dup_of_key"]]
            if j > i:
                rows[i], rows[j] = rows[j], rows[i]
                pos_of_key[r["_dup_of_key"]] = i
    ids = {}
    out = []
    for n, r in enumerate(rows, 1):
        r["id"] = f"q{n:04d}"
        if r["kind"] == "good":
            ids[r["_key"]] = r["id"]
    for r in rows:
        dup_of = ids[r["_dup_of_key"]] if r["kind"] == "paraphrase_duplicate" else None
        keys = ["id", "label", "kind", "instruction", "answer", "source", "source_id", "package"]
        out.append({k: r[k] for k in keys} | {"duplicate_of": dup_of})
    for r in out:
        if r["duplicate_of"]:
            assert int(r["duplicate_of"][1:]) < int(r["id"][1:])
    write_jsonl("labelled.jsonl", out)

    counts = Counter(r["kind"] for r in out)
    origins = Counter((r["kind"], r["_origin"].split(":")[0]) for r in rows)
    write_sources(passages, out, counts, origins)
    width = max(map(len, KINDS))
    for kind in KINDS:
        print(f"{kind:<{width}}  {counts[kind]:4d}")
    print(f"{'total':<{width}}  {len(out):4d}  ({counts['good']} good, {len(out) - counts['good']} bad)")


def check(rows: list[dict], by_id: dict, pairs: list[dict]) -> None:
    seen = set()
    pair_answers = {p["answer"] for p in pairs}
    for r in rows:
        key = (r["instruction"], r["answer"])
        assert key not in seen, key
        seen.add(key)
        kind, q, a, src = r["kind"], r["instruction"], r["answer"], r["source"]
        assert q.strip() and a.strip(), r
        if kind in ("good", "paraphrase_duplicate"):
            assert not CONTEXT_RE.search(q) and not CONTEXT_RE.search(a), r
            assert not REFUSAL_START_RE.search(a), r
            assert re.search(r"[.!?]$", a) and 1 <= sentence_count(a) <= 4, r
            flat = src.replace(",", "")
            for num in NUMBER_RE.findall(a):
                assert num.replace(",", "") in flat, (num, r)
        if kind == "contradiction":
            assert a not in pair_answers and not CONTEXT_RE.search(q + " " + a), r
        if kind == "refusal":
            assert REFUSAL_RE.search(a), r
        if kind == "truncated":
            assert not re.search(r"[.!?]$", a), r
        if kind == "context_reference" and r["_origin"].startswith("script"):
            assert CONTEXT_RE.search(q) or CONTEXT_RE.search(a), r  # hand-written ones may be subtler
        if kind == "wrong_source":
            assert r["package"].lower() not in q.lower() + a.lower(), r
    good = {r["source_id"] for r in rows if r["kind"] == "good"}
    assert good == set(by_id), set(by_id) - good
    good_q = [r["instruction"] for r in rows if r["kind"] == "good"]
    assert len(good_q) == len(set(good_q))


# --- SOURCES.md

KIND_DOC = {
    "good": "Correct, self-contained instruction (names its subject; no reference to an unseen text) with a fluent "
    "1-4 sentence answer supported by the source passage. Hand-written in pairs.jsonl.",
    "wrong_source": "A correct pair from pairs.jsonl attached to a passage of another package and another topic "
    "family, so the answer is not supported by its source. The good row the pair was written for is not in the set "
    "(each pair is used once).",
    "contradiction": "Fluent, plausible answer that contradicts its source: changed numbers, versions or dates, "
    "negated claims, swapped or wrong names. Hand-written.",
    "word_salad": "Fluent-looking nonsense or markup/identifier soup, as tiny generator models emit: grammatical but "
    "meaningless sentences, bigram-chain text over the passages (no 6-gram copied), shuffled words, CamelCase "
    "identifier runs, broken markdown/paths with stray CJK, repetition loops, chat-template tokens; in the answer, "
    "in the instruction, or both (a few word-salad instructions carry a normal answer). Script-made and hand-written.",
    "context_reference": "Instruction that leans on a context the reader of the final dataset never sees (According "
    "to the text..., ...the passage above, Summarize the above.), or an answer that cites it (The text states "
    "that...); the answer is otherwise correct. Script-made from pairs with varied templates, plus hand-written.",
    "refusal": "Answer that refuses, disclaims or says it does not know (I'm sorry, but I cannot..., As an AI "
    "language model..., I don't know.), in varied wordings. Hand-written.",
    "truncated": "Correct answer cut mid-sentence, mid-word, or down to its first 2-4 words, with no final "
    "punctuation. Script-made from pairs.",
    "paraphrase_duplicate": "Paraphrased instruction (same or reworded answer) of a good row that is in the set; "
    "duplicate_of holds that good row's id, and it always comes earlier in the file. Only the later row is bad. "
    "Hand-written.",
}


def write_sources(passages: list[dict], out: list[dict], counts: Counter, origins: Counter) -> None:
    by_pkg: dict[str, dict] = {}
    for p in passages:
        e = by_pkg.setdefault(p["package"], {"version": p["version"], "license": p["license"], "n": 0, "rows": 0})
        e["n"] += 1
    for r in out:
        by_pkg[r["package"]]["rows"] += 1
    lines = [
        "# Labelled curation benchmark (`bench/quality/`)",
        "",
        f"`labelled.jsonl`: {len(out)} instruction/answer rows, each with the passage it should be grounded in "
        f"(`source`, `source_id`, `package`), a `label` (good or bad) and the `kind` of badness. It measures a data-"
        "curation pipeline: precision and recall of its drop decisions, overall and per kind. Every row has exactly "
        "one kind, and each bad row was written to be bad for that one reason only (a wrong_source row, for "
        "instance, is fluent and correct about its own subject; only its grounding is wrong).",
        "",
        "Rebuild (deterministic, seeded): `.venv/bin/python bench/quality/build.py` "
        "(`--reuse-passages` takes the passages from `passages.jsonl` instead of the installed packages).",
        "",
        "## Kinds",
        "",
        "| kind | label | rows | what it is |",
        "|---|---|---|---|",
    ]
    for kind in KINDS:
        label = "good" if kind == "good" else "bad"
        lines.append(f"| {kind} | {label} | {counts[kind]} | {KIND_DOC[kind]} |")
    lines += ["", f"Total: {len(out)} rows, {counts['good']} good and {len(out) - counts['good']} bad.", ""]
    lines += ["Where the rows come from:", "", "| kind | origin | rows |", "|---|---|---|"]
    for (kind, origin), n in sorted(origins.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        lines.append(f"| {kind} | {origin} | {n} |")
    lines += [
        "",
        "Fields: `id`, `label`, `kind`, `instruction`, `answer`, `source` (the passage text), `source_id` "
        "(a `passage_id` of `passages.jsonl`), `package`, `duplicate_of` (id of the earlier good row, for "
        "paraphrase_duplicate; otherwise null). Rows are shuffled.",
        "",
        "Notes for measuring:",
        "",
        "* wrong_source rows keep the pair's instruction, which names the pair's own package; the source is a passage "
        "of a package from another topic family (e.g. an HTTP question on a NumPy passage), chosen so that at most 30 "
        "% of the answer's content words occur in it.",
        "* Contradictions sometimes ask about the same fact as a good row in other words (as a generator does when "
        "it asks twice); they are labelled contradiction, not paraphrase_duplicate.",
        "* Script-made truncated, wrong_source, context_reference and word_salad rows use pairs that do not appear "
        "as good rows, so exact-match deduplication against good rows cannot catch them.",
        "* `package` is the package of the source passage; for wrong_source it is not the package the question is "
        "about.",
        "* Some hand-written context_reference rows are deliberately subtle (What does the asterisk in the list "
        "refer to?, Pick three features from the list and explain them.) and match no fixed phrase list.",
        "* Passages are README prose with the code removed, so a few keep a dangling lead-in such as Here is an "
        "example: or an empty-looking heading; rows never rely on the removed code.",
        "",
        "## Sources",
        "",
        "Passages are the long descriptions (README text) in the `METADATA` files of packages installed in "
        "`.venv/lib/python3.11/site-packages/`, all under permissive licences (MIT, BSD, Apache-2.0, and ISC for "
        "shellingham, as the METADATA states them below; the package's licence applies to the quoted passage). "
        "`extract.py` parses METADATA with `email.parser`, and turns the "
        "Markdown or reStructuredText body into plain paragraphs: fenced and indented code blocks, doctest and shell "
        "lines, HTML (comments, tags, tables, pictures), images and badges, tables, RST directives, comments and "
        "link targets, GitHub admonition markers and bare URLs are removed; link texts, inline code, emphasis and "
        "roles (`:rfc:` becomes RFC N) are kept as plain words; list items become one line each. Each passage is "
        "then cut between two hand-picked anchors (`passage_specs.json`), 400-1500 characters about one topic. "
        "The numbers below are as of the build.",
        "",
        "| package | version | licence (METADATA) | passages | rows |",
        "|---|---|---|---|---|",
    ]
    for pkg in sorted(by_pkg, key=str.lower):
        e = by_pkg[pkg]
        lines.append(f"| {pkg} | {e['version']} | {e['license']} | {e['n']} | {e['rows']} |")
    lines += [
        "",
        f"{len(passages)} passages from {len(by_pkg)} packages. The instructions, answers and bad rows are written "
        "for this benchmark (by hand, or by `build.py` from the hand-written pairs); the passages are quoted from the "
        "packages' own descriptions.",
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
        "| `extract.py` | METADATA to plain text; `python extract.py PACKAGE` prints a package's cleaned text |",
        "| `passage_specs.json` | passage anchors and topic group (hand-picked) |",
        "| `passages.jsonl` | the extracted passages (written by build.py) |",
        "| `pairs.jsonl` | hand-written correct pairs (passage_id, instruction, answer) |",
        "| `contradictions.jsonl`, `refusals.jsonl`, `word_salad.jsonl`, `context_references.jsonl` | "
        "hand-written bad rows (passage_id, instruction, answer) |",
        "| `paraphrases.jsonl` | hand-written paraphrases (duplicate_of_instruction names the pair) |",
        "| `build.py` | assembles everything, checks it, writes labelled.jsonl, passages.jsonl and this file |",
        "| `labelled.jsonl` | the benchmark |",
        "",
    ]
    (HERE / "SOURCES.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
