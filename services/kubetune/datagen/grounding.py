"""Grounding: each sample checked against the source text it was written from, and semantic deduplication.

A generator, small or large, now and then writes an answer its chunk does not support (an invented fact, a
confident answer about something else) or an instruction about something the chunk never mentions. Two checks
catch that, each a score kept on the row:

- lexical support (``support_score``): the share of the answer's content words (names, numbers, terms; the
  common function words left out) that occur in the source. An answer about another text shares few of them.
- embedding similarity (``answer_similarity_score``, ``instruction_similarity_score``): the cosine between the
  answer, or the instruction, and the passage of the source closest to it, with a sentence-transformers model
  (all-MiniLM-L6-v2 by default, built into ``models/`` by ``make setup``; loaded from a folder, never a hub).
  The source is cut into windows of a few sentences, as the model reads 256 word pieces at most.

- numbers (``unsupported_numbers``): the figures of the answer (versions, counts, percentages, dates) that the
  source does not hold. An answer that agrees with its source in every word but one figure ("Python 3.8 and newer"
  from a source that says 3.10) is the contradiction the two scores above cannot see; on the labelled bench this
  check drops a quarter of the contradicting answers and none of the good ones.

- names (``unknown_terms``): the names and acronyms of the instruction (two capitals or more: QLoRA, FastAPI)
  that the source never mentions. A question about an invented "QLOA" or "FFXI" embeds close to a source on
  QLoRA, so the similarity floor passes it.

A sample fails ``ungrounded`` when either answer score is below its floor, ``unsupported_number`` when its answer
states a figure its source does not, ``unknown_term`` when its instruction names what the source never does,
``off_topic`` when the instruction's similarity is below its floor. The
floors' defaults come from the labelled bench (bench/quality): what they catch and what they wrongly drop is
measured there, not assumed. Semantic deduplication (SemDeDup-style) drops a sample whose instruction and
answer embed close to a kept one's (``semantic_duplicate``), keeping the better grounded of the two: a
paraphrased question teaches nothing new and leaks across the split.
"""

from __future__ import annotations

import re

from kubetune.datagen.generate import FUNCTION_WORDS
from kubetune.llm.embeddings import Embedder

# Words that carry no claim: a source's support of an answer is judged on the rest. The function words the
# verbatim-extract matching leaves out (kubetune.datagen.generate), and more that a claim does not rest on.
_MORE_STOPWORDS = """
about above after again against all also am any aren't because before being below between both cannot could did
doing don't down during each either else etc even ever every few further had having he her here hers herself him
himself his however if into isn't itself just let's like may me might more most much must my myself neither no
nor not now off often once one only other otherwise our ours ourselves out over own per rather same she should
some theirs themselves those through thus too under until up upon us use used uses using very via we whether
while whom whose within without yes yet yours yourself yourselves able allow allows provide provides make makes
many way ways
"""
STOPWORDS = FUNCTION_WORDS | frozenset(_MORE_STOPWORDS.split())
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_+#.\-']*[A-Za-z0-9+#]|[A-Za-z]|\d+(?:\.\d+)*")


def _stem(word: str) -> str:
    """A light stem, enough to match "handles" to "handle" and "libraries" to "library"."""
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)] + repl
    return word


def terms(text: str) -> list[str]:
    """The words of ``text`` that carry its claims, lower-cased, as written: no function words."""
    words = (w.lower().strip(".-'") for w in _WORD.findall(text))
    return [w for w in words if w and w not in STOPWORDS and (len(w) > 2 or w.isdigit())]


def content_words(text: str) -> list[str]:
    """:func:`terms`, stemmed: what a source's support of an answer is counted on."""
    return [_stem(w) for w in terms(text)]


def lexical_support(answer: str, source: str) -> float:
    """The share of the answer's content words that occur in the source (1.0 for an answer with none)."""
    words = content_words(answer)
    if not words:
        return 1.0
    found = set(content_words(source))
    return sum(w in found for w in words) / len(words)


# A figure: digits with thousands separators and decimal or version parts ("4,000,000", "3.10", "0.26.0"), not a
# list's marker at a line's start ("1." / "2)"). A small count (0 to 10) written by the answer's author is left
# out: "three steps" from a source that lists three is a count the writer made, not a claim against the source.
_FIGURE = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)*(?![\w])|(?<=[A-Za-z])\d+(?:\.\d+)*|\d+(?=[A-Za-z%])")
_LIST_MARKER = re.compile(r"^\s*\d+[.)]\s", re.M)


def figures(text: str) -> set[str]:
    """The figures of ``text``, separators removed ("4,000,000" is "4000000")."""
    return {m.group(0).replace(",", "") for m in _FIGURE.finditer(_LIST_MARKER.sub(" ", text))}


def unsupported_numbers(answer: str, source: str) -> list[str]:
    """The answer's figures the source does not hold, in order; small counts (0 to 10 alone) left out."""
    held = figures(source)
    found = sorted(figures(answer) - held, key=answer.find)
    return [f for f in found if not (f.isdigit() and int(f) <= 10)]


# A name or an acronym: a word with two capitals or more (QLoRA, DPO, FastAPI, GPT4). General computing acronyms
# a question may use whatever its source says are left out.
_NAME = re.compile(r"(?<![\w-])[A-Za-z0-9]*[A-Z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*(?![\w-])")
_GENERAL_NAMES = frozenset(
    re.findall(
        r"\w+",
        "AI API APIs CPU CPUs GPU GPUs LLM LLMs ML NLP JSON YAML HTML CSS URL URLs SQL PDF CSV HTTP HTTPS OK CLI UI OS "
        "RAM IDE",
    )
)


def unknown_terms(instruction: str, source: str) -> list[str]:
    """The names and acronyms the instruction asks about that its source never mentions, in order, compared
    without case ("How does QLOA avoid FFXI optimization?" about a source on QLoRA): a question about something
    invented, which the embedding similarity still finds close to the source's topic."""
    held = source.casefold()
    found = [n for n in _NAME.findall(instruction) if n not in _GENERAL_NAMES and n.casefold() not in held]
    return list(dict.fromkeys(found))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def windows(source: str, sentences: int = 3, max_chars: int = 600) -> list[str]:
    """The source as overlapping windows of a few sentences (at most ``max_chars`` each): what the embedding model
    compares a sample with, since it reads only the first 256 word pieces of a text."""
    parts = [p.strip() for p in _SENTENCE_END.split(source) if p.strip()]
    if not parts:
        return [source[:max_chars]]
    found, start = [], 0
    while True:
        found.append(" ".join(parts[start : start + sentences])[:max_chars])
        if start + sentences >= len(parts):
            return found
        start += max(sentences - 1, 1)


def similarity_scores(embedder: Embedder, samples: list[dict], sources: list[str]) -> list[tuple[float, float]]:
    """(answer, instruction) cosine with the closest window of each sample's source."""
    import numpy as np

    cut = [windows(s) for s in sources]
    flat = [w for ws in cut for w in ws]
    window_vectors = embedder.encode(flat)
    answers = embedder.encode([s["answer"] for s in samples])
    instructions = embedder.encode([s["instruction"] for s in samples])
    scores, at = [], 0
    for i, ws in enumerate(cut):
        block = window_vectors[at : at + len(ws)]
        at += len(ws)
        scores.append((float(np.max(block @ answers[i])), float(np.max(block @ instructions[i]))))
    return scores


def semantic_duplicates(
    embedder: Embedder, samples: list[dict], threshold: float, preference: list[float] | None = None
) -> list[int | None]:
    """For each sample, the index of a kept sample it duplicates, or None. Two samples are duplicates when the
    mean of their instructions' and their answers' cosines reaches ``threshold``: the same question, answered
    alike (a question asked twice and answered differently is left to the other checks). Of a group, the sample
    with the highest ``preference`` (its grounding, where scored) is kept, else the first."""
    import numpy as np

    instructions = embedder.encode([s["instruction"] for s in samples])
    answers = embedder.encode([s["answer"] for s in samples])
    order = sorted(range(len(samples)), key=lambda i: -(preference[i] if preference else 0.0))
    # The kept samples' vectors side by side, filled as they are kept: a step compares with n kept rows, no copy.
    both = np.concatenate([instructions, answers], axis=1) / 2
    kept_vectors = np.empty_like(both)
    kept: list[int] = []
    matches: list[int | None] = [None] * len(samples)
    for i in order:
        if kept:
            mean = kept_vectors[: len(kept)] @ np.concatenate([instructions[i], answers[i]])
            best = int(np.argmax(mean))
            if mean[best] >= threshold:
                matches[i] = kept[best]
                continue
        kept_vectors[len(kept)] = both[i]
        kept.append(i)
    return matches
