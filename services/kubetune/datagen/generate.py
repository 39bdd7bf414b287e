"""What a DatasetBuild asks the LLM, under which JSON schema, and how each answer is read.

Four tasks: writing samples about a chunk (instruction/answer pairs, or for the extract preference method
instruction/answer/verbatim-extract triples), writing the instruction a span of the chunk answers (instruction
back-translation: the answer is the source's own text), answering an instruction from a chunk (Evol-Instruct's
regenerated answers and the judged preference method's candidates), and rewriting an instruction
(Evol-Instruct); the fourth, judging, is :mod:`kubetune.llm.judge`. Every request carries a JSON schema, so
the engine's structured outputs keep answers parseable; an answer that still fails (cut by ``maxTokens``,
empty fields, an "extract" not in the chunk) is counted under a reason and dropped, never fatal.
"""

from __future__ import annotations

import random
import re

from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec, GenerationSpec
from kubetune.datagen.documents import Chunk
from kubetune.llm.chat import Completion, Request, count, read_json, request_seed

DEFAULT_SYSTEM_PROMPT = (
    "You write training data for a helpful assistant. Read the text the user gives and write {n} "
    "instruction-answer pairs about it. Each instruction is a question or task a user could ask without "
    "seeing the text; each answer is correct according to the text, complete, and never mentions "
    '"the text". Reply with JSON only: {{"pairs": [{{"instruction": "...", "answer": "..."}}]}}.'
)

EXTRACT_SYSTEM_PROMPT = (
    "You write preference data for a helpful assistant. Read the text the user gives and write {n} "
    "triples about it. Each has an instruction a user could ask without seeing the text; an answer in your "
    "own words; and an extract: one to three consecutive sentences copied word for word from the text that "
    'answer the instruction. Never mention "the text". Reply with JSON only: '
    '{{"pairs": [{{"instruction": "...", "answer": "...", "extract": "..."}}]}}.'
)

ANSWER_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question using the facts in the reference below, completely "
    'and correctly, in your own words. Never mention "the text" or "the reference". '
    'Reply with JSON only: {"answer": "..."}.'
)

BACKTRANSLATION_SYSTEM_PROMPT = (
    "You write training data for a helpful assistant. The user gives you an answer taken from a document. "
    "Write the one question a user would ask, without seeing the document, to which this is the answer: a "
    'question that names its subject. Never mention "the text", "the passage" or "the answer". '
    'Reply with JSON only: {{"instruction": "..."}}.'
)

EVOLVE_PROMPTS = {
    "deepen": "Rewrite the instruction so that it asks for a deeper understanding of the same topic.",
    "concretize": "Rewrite the instruction so that it is about a more specific, concrete case of the topic.",
    "reasoning": "Rewrite the instruction so that answering it takes several explicit steps of reasoning.",
    "broaden": "Write a new instruction on a related but broader topic in the same domain, as hard as the original.",
}
EVOLVE_SYSTEM_PROMPT = (
    "You make instructions for training an assistant harder and more varied. {operation} The new instruction "
    "must be answerable by a person who knows the field, stay under 60 words, and be a single request. "
    'Reply with JSON only: {{"instruction": "..."}}.'
)

# Bounds in the schema stop a small model's repetition loops inside a string before maxTokens cuts the JSON.
MAX_INSTRUCTION_CHARS = 300
MAX_ANSWER_CHARS = 1200


def _string(max_length: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _object(**properties: dict) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def pairs_schema(n: int, extract: bool = False) -> dict:
    """Up to ``n`` samples of non-empty strings; with ``extract``, each also carries a verbatim extract."""
    fields = {"instruction": _string(MAX_INSTRUCTION_CHARS), "answer": _string(MAX_ANSWER_CHARS)}
    if extract:
        fields["extract"] = _string(MAX_ANSWER_CHARS)
    return _object(pairs={"type": "array", "items": _object(**fields), "minItems": 1, "maxItems": n})


ANSWER_SCHEMA = _object(answer=_string(MAX_ANSWER_CHARS))
INSTRUCTION_SCHEMA = _object(instruction=_string(MAX_INSTRUCTION_CHARS))
# Back-translation's instruction is a question, from its first word to its mark: a weak model left free writes a
# statement or a heading instead (quality's not_a_request), and one made to start with a question word asks.
QUESTION_SCHEMA = _object(
    instruction={
        "type": "string",
        "maxLength": MAX_INSTRUCTION_CHARS,
        # No {m,n} bound: xgrammar 0.2 cannot compile a bounded repeat inside a JSON string's pattern.
        "pattern": r"^(What|How|Why|When|Which|Who|Where|Is|Are|Does|Do|Can|Should) [^\n?]+\?$",
    }
)
# One worked example before the real answer (few-shot): the shape of the reply, on a subject of no corpus.
_BACKTRANSLATION_EXAMPLE = (
    "Answer: list.sort() sorts a Python list in place and returns None, while sorted() returns a new sorted "
    "list and leaves its argument unchanged.",
    '{"instruction": "What is the difference between list.sort() and sorted() in Python?"}',
)


def _system(spec: GenerationSpec, template: str) -> str:
    return (spec.system_prompt or template).format(n=spec.pairs_per_chunk)


def sample_requests(chunks: list[Chunk], spec: DatasetBuildSpec) -> list[Request]:
    """One request per chunk: write ``pairsPerChunk`` samples about it."""
    extract = spec.type == "preference" and spec.preference.method == "extract"
    system = _system(spec.generation, EXTRACT_SYSTEM_PROMPT if extract else DEFAULT_SYSTEM_PROMPT)
    schema = pairs_schema(spec.generation.pairs_per_chunk, extract=extract)
    return [
        Request(
            [{"role": "system", "content": system}, {"role": "user", "content": c.text}],
            schema,
            request_seed(spec.generation.seed, "samples", c.chunk_id),
        )
        for c in chunks
    ]


def answer_spans(chunk: Chunk, n: int, min_chars: int = 200, max_chars: int = 700) -> list[str]:
    """Instruction back-translation's answers (Li et al. 2023): up to ``n`` spans of the chunk, each a run of
    whole sentences between ``min_chars`` and ``max_chars``, spread over the chunk and not overlapping. Verbatim
    from the source, so grounded by construction."""
    from kubetune.datagen.documents import sentences

    parts = sentences(chunk.text)
    spans, current = [], []
    for sentence in parts:
        if current and len(" ".join([*current, sentence])) > max_chars:
            if len(" ".join(current)) >= min_chars:
                spans.append(" ".join(current))
            current = []
        current.append(sentence)
    if min_chars <= len(" ".join(current)) <= max_chars:  # a sentence longer than a span on its own is left out
        spans.append(" ".join(current))
    if len(spans) <= n:
        return spans
    step = len(spans) / n
    return [spans[int(i * step)] for i in range(n)]


def backtranslation_requests(chunks: list[Chunk], spec: DatasetBuildSpec) -> list[tuple[Chunk, str, Request]]:
    """One request per answer span: write the instruction it answers."""
    system = BACKTRANSLATION_SYSTEM_PROMPT.format()  # generation.systemPrompt is the pairs prompt's, not this one's
    return [
        (
            c,
            span,
            Request(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": _BACKTRANSLATION_EXAMPLE[0]},
                    {"role": "assistant", "content": _BACKTRANSLATION_EXAMPLE[1]},
                    {"role": "user", "content": f"Answer: {span}"},
                ],
                QUESTION_SCHEMA,
                request_seed(spec.generation.seed, "backtranslate", c.chunk_id, span),
            ),
        )
        for c in chunks
        for span in answer_spans(c, spec.generation.pairs_per_chunk)
    ]


def answer_request(chunk_text: str, instruction: str, seed: int, temperature: float | None = None) -> Request:
    """Answer ``instruction`` from the chunk (Evol-Instruct's new answers, judged preference candidates)."""
    user = f"Reference:\n{chunk_text}\n\nQuestion: {instruction}"
    return Request(
        [{"role": "system", "content": ANSWER_SYSTEM_PROMPT}, {"role": "user", "content": user}],
        ANSWER_SCHEMA,
        seed,
        temperature,
    )


def evolve_request(instruction: str, operation: str, seed: int) -> Request:
    system = EVOLVE_SYSTEM_PROMPT.format(operation=EVOLVE_PROMPTS[operation])
    return Request(
        [{"role": "system", "content": system}, {"role": "user", "content": f"Instruction: {instruction}"}],
        INSTRUCTION_SCHEMA,
        seed,
    )


def read_field(completion: Completion, field: str, dropped: dict[str, int]) -> str | None:
    """A single non-empty string field of a JSON answer (``{"answer": ...}``), or None with the reason counted."""
    payload = read_json(completion, dropped)
    if payload is None:
        return None
    value = payload.get(field) if isinstance(payload, dict) else None
    if not isinstance(value, str) or not value.strip():
        count(dropped, "wrong_shape")
        return None
    return value.strip()


_SPACE = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _word_list(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _best_run(query: list[str], parts: list[str], min_recall: float) -> str | None:
    """The run of up to four consecutive ``parts`` whose words best match ``query`` (F1), among those holding
    at least ``min_recall`` of the query's words."""
    words = [_word_list(p) for p in parts]
    wanted = {w: query.count(w) for w in set(query)}
    best, best_f1 = None, 0.0
    for i in range(len(parts)):
        bag: dict[str, int] = {}
        size = 0
        for j in range(i, min(i + 4, len(parts))):
            for w in words[j]:
                bag[w] = bag.get(w, 0) + 1
            size += len(words[j])
            common = sum(min(bag.get(w, 0), n) for w, n in wanted.items())
            if not common:
                continue
            recall, precision = common / len(query), common / size
            f1 = 2 * recall * precision / (recall + precision)
            if f1 > best_f1 and recall >= min_recall:
                best, best_f1 = " ".join(parts[i : j + 1]), f1
    return best


def verbatim_extract(
    extract: str, chunk_text: str, answer: str = "", instruction: str = "", min_overlap: float = 0.5
) -> str | None:
    """The chunk's own words for the model's extract.

    The extract itself when it stands in the chunk (white space aside); otherwise the run of whole chunk
    sentences that best matches it (word F1), when that run holds at least ``min_overlap`` of its words;
    failing that, the run that best matches the content words of the model's ``answer``, then of the
    ``instruction`` (at least half of them): the passage of the chunk the question is about. None when none of
    them is in the chunk. Small models paraphrase while they "copy": snapping to the chunk's sentences
    keeps every chosen answer verbatim and sentence-bounded whatever the model wrote.
    """
    from kubetune.datagen.documents import sentences

    extract = _squash(extract)
    if extract and extract in _squash(chunk_text):
        return extract
    parts = sentences(_squash(chunk_text))
    queries = [(_word_list(extract), min_overlap), (_content_words(answer), 0.5), (_content_words(instruction), 0.5)]
    for query, recall in queries:
        if query and (found := _best_run(query, parts, recall)):
            return found
    return None


_STOPWORD_TEXT = (
    "a an and are as at be been but by can do does for from has have how i in is it its of on or so such than "
    "that the their them then there these they this to was were what when where which who why will with would "
    "you your"
)
FUNCTION_WORDS = frozenset(_STOPWORD_TEXT.split())


def _content_words(text: str) -> list[str]:
    return [w for w in _word_list(text) if w not in FUNCTION_WORDS and len(w) > 2]


_SENTENCE_END = re.compile(r"[.!?][\"')\]]?$")


def parse_samples(completion: Completion, chunk: Chunk, spec: DatasetBuildSpec, dropped: dict[str, int]) -> list[dict]:
    """The samples of one answer as rows (``instruction``, ``answer`` and, for the extract method, ``chosen``
    and ``rejected``); each reason for dropping one is counted in ``dropped``."""
    payload = read_json(completion, dropped)
    if payload is None:
        return []
    items = payload.get("pairs") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        count(dropped, "wrong_shape")
        return []
    extract_method = spec.type == "preference" and spec.preference.method == "extract"
    rows = []
    for item in items:
        fields = ("instruction", "answer", "extract") if extract_method else ("instruction", "answer")
        if not isinstance(item, dict) or not all(isinstance(item.get(f), str) and item[f].strip() for f in fields):
            count(dropped, "wrong_shape")
            continue
        row = {
            "instruction": item["instruction"].strip(),
            "answer": item["answer"].strip(),
            "source": chunk.source,
            "chunk_id": chunk.chunk_id,
            "origin": "generated",
        }
        if extract_method:
            chosen = verbatim_extract(item["extract"], chunk.text, row["answer"], row["instruction"])
            if chosen is None:
                count(dropped, "extract_not_verbatim")
                continue
            if len(chosen) < spec.preference.min_chosen_chars:
                count(dropped, "extract_too_short")
                continue
            if not chosen[0].isupper() or not _SENTENCE_END.search(chosen):
                count(dropped, "extract_not_a_sentence")
                continue
            row |= {"chosen": chosen, "rejected": row["answer"]}
        rows.append(row)
    return rows


def evolve_plan(samples: list[dict], share: float, operations: list[str], seed: int) -> list[tuple[int, str]]:
    """Which samples are evolved, and how: a seeded choice of ``share`` of them, each with one operation."""
    rng = random.Random(seed)
    n = round(len(samples) * share)
    chosen = sorted(rng.sample(range(len(samples)), n)) if n else []
    return [(i, operations[rng.randrange(len(operations))]) for i in chosen]
