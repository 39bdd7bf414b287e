"""Heuristic quality filters on one generated sample (instruction + answer): cheap checks, no model.

``drop_reason`` runs them in a fixed order and names the first that fails; the funnel counts these names.
"""

from __future__ import annotations

import itertools
import re

from kubetune.api.v1alpha1.datasetbuild import QualitySpec

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    """Casefolded ``\\w+`` tokens."""
    return _WORD.findall(text.casefold())


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for a text of fewer than n words)."""
    tokens = _words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def non_alpha_ratio(text: str) -> float:
    """Share of the non-space characters that are neither letters nor digits (0 for an empty text)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(not c.isalnum() for c in chars) / len(chars)


def _normalise_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


_I_CANT = (
    r"i(?:\s+(?:can't|cannot|can\s+not|am\s+not\s+able|am\s+unable|won't|will\s+not|must\s+decline)"
    r"|'m\s+(?:not\s+able|unable))"
)
_SENTENCE_START = r"(?:^|(?<=[.!?:\n]))\s*[\"'(]*"
_REFUSALS = [
    re.compile(p, re.I)
    for p in (
        # An apology that turns into a refusal: "I'm sorry, but I can't ...", "Unfortunately, as an AI ...".
        _SENTENCE_START + r"(?:i'm\s+(?:so\s+|very\s+|really\s+)?sorry|i\s+am\s+sorry|sorry|i\s+apologi[sz]e"
        r"|unfortunately)\b[^.!?]{0,60}?\b(?:" + _I_CANT + r"|i\s+(?:do\s+not|don't)\s+(?:have|know)|as\s+an\s+ai)\b",
        # "I cannot provide / answer / help ..." at a sentence's start, after an optional "Unfortunately,".
        _SENTENCE_START + r"(?:(?:unfortunately|however|but|so|sadly)\s*,?\s*)?" + _I_CANT + r"\s+(?:to\s+)?"
        r"(?:provide|answer|help|assist|comply|fulfil|fulfill|browse|access|share|give|generate|create|discuss"
        r"|engage|offer|determine|confirm|verify|tell\s+you|do\s+that)\b",
        # "As an AI (language model), ..." or "As an AI I ...": not "As an AI researcher".
        r"\bas\s+an\s+ai(?:\s+(?:language\s+model|model|assistant|system|chatbot))?(?:\s*[,:;.]|\s+i\b)",
        r"\bi(?:'m|\s+am)\s+(?:just\s+|only\s+)?an\s+ai(?:\s+(?:language\s+model|model|assistant|system|chatbot)\b"
        r"|\s*[,.;:!]|\s+and\b)",
        r"\bi\s+(?:do\s+not|don't)\s+have\s+(?:access|the\s+ability|personal\s+(?:opinions|experiences|feelings)"
        r"|(?:any\s+|enough\s+|specific\s+|real-time\s+)?(?:information|data|details))\b",
        r"\bmy\s+(?:knowledge\s+cut-?off|training\s+data(?:\s+only)?\s+(?:goes|extends|includes))\b",
        # "I don't know what UTS #46 is." / "I'm not sure how ...": the answer says it has none.
        _SENTENCE_START + r"(?:i\s+(?:do\s+not|don't)\s+know|i(?:'m|\s+am)\s+not\s+(?:sure|certain))\s+"
        r"(?:what|how|who|which|where|when|why|if|whether|about|the\s+answer)\b",
    )
]


def is_refusal(answer: str) -> bool:
    """A refusal or an "as an AI" disclaimer instead of an answer ("I cannot stress enough" is not one)."""
    text = _normalise_quotes(answer)
    return any(p.search(text) for p in _REFUSALS)


_CONTEXT_NOUN = r"(?:text|passage|excerpt|context|document|article|snippet|chunk)"
_QUALIFIER = r"(?:provided|given|above|original|source|accompanying|following|preceding|reference)"
# What a writer was shown, named as such: "the provided documentation", "the information above". Never alone ("the
# documentation of pandas" is a subject), only with a word that says it was shown, before it or after it.
_DOCUMENT_NOUN = r"(?:documentation|docs|readme|description|information|material|content|notes|details)"
_SHOWN = r"(?:provided|given|above|accompanying|preceding|supplied)"
_SHOWN_DOCUMENT = (
    rf"\b(?:the|this)\s+(?:{_SHOWN}\s+(?:{_CONTEXT_NOUN}|{_DOCUMENT_NOUN})\b"
    rf"|(?:{_CONTEXT_NOUN}|{_DOCUMENT_NOUN})\s+(?:provided|given|above|below|shown|supplied)\b"
    r"(?!\s+(?:by|to|in|on|at|for|when|if|with|as)\b))"
)
_REFERENCE_VERB = (
    r"(?:says|said|states|stated|mentions|mentioned|describes|described|explains|explained|notes|noted|suggests"
    r"|suggested|indicates|indicated|discusses|discussed|refers|referred|highlights|highlighted|emphasi[sz]es"
    r"|focuses|outlines|presents|argues|claims|lists|specifies|does\s+not|doesn't|did\s+not|didn't|is\s+about"
    r"|above|below|itself|here)"
)
# The patterns that say so in an instruction too; the others only in an answer, where "the original text" cannot be
# what a question asks about.
_LEANING_ON_CONTEXT = [
    re.compile(p, re.I)
    for p in (
        rf"\b(?:according\s+to|based\s+on|as\s+(?:stated|mentioned|described|noted)\s+in)\s+the\s+(?:{_QUALIFIER}\s+)?"
        rf"{_CONTEXT_NOUN}\b(?!\s+(?:editor|file|box|field|of\b))",
        _SHOWN_DOCUMENT,
        rf"\b(?:the|this)\s+{_CONTEXT_NOUN}\s+{_REFERENCE_VERB}\b",
    )
]
_CONTEXT_REFERENCES = _LEANING_ON_CONTEXT + [
    re.compile(p, re.I)
    for p in (
        rf"\b(?:the|this)\s+{_QUALIFIER}\s+(?:{_CONTEXT_NOUN}|information|material|content)\b",
        rf"\b(?:mentioned|stated|described|given|provided|discussed)\s+in\s+the\s+{_CONTEXT_NOUN}\b",
        rf"\b(?:in|from|within|throughout)\s+the\s+{_CONTEXT_NOUN}\s*[,.;:!?)]",
    )
]


def mentions_context(answer: str) -> bool:
    """The answer refers to the source it was written from ("according to the text", "the passage says",
    "the provided information"), which the reader of the dataset never sees. Whole phrases only: "the text
    editor vim" or "in the context of databases" do not count."""
    return any(p.search(answer) for p in _CONTEXT_REFERENCES)


def restates_instruction(instruction: str, answer: str) -> bool:
    """The answer is (nearly) just the instruction again: its words are a run of the instruction's covering at
    least half of it, or the two word sets have Jaccard similarity >= 0.8 and the answer is at most 1.5 times
    as many words."""
    asked, said = _words(instruction), _words(answer)
    if not asked or not said:
        return False
    if len(said) * 2 >= len(asked) and f" {' '.join(said)} " in f" {' '.join(asked)} ":
        return True
    a, b = set(asked), set(said)
    return len(a & b) / len(a | b) >= 0.8 and len(said) <= 1.5 * len(asked)


# An instruction that leans on a text its reader never sees: "the passage above", "this document", "the list",
# "the example given". A self-contained instruction names its subject instead.
_UNSEEN = r"(?:text|passage|excerpt|context|document|article|section|paragraph|snippet|chunk|list|table|figure|example)"
_INSTRUCTION_CONTEXT = [
    re.compile(p, re.I)
    for p in (
        rf"\b(?:this|these|the\s+(?:above|following|given|provided|preceding))\s+{_UNSEEN}s?\b",
        rf"\b(?:in|from|of|on|within)\s+the\s+{_UNSEEN}s?\b(?!\s+(?:of|for|to|in|type|module|class|function)\b)",
        rf"\bthe\s+{_UNSEEN}\s+(?:above|below|given|provided|shown)\b",
        r"\b(?:summari[sz]e|paraphrase|rewrite|translate)\s+(?:the\s+)?(?:above|this|it)\b",
        r"\b(?:aforementioned|the\s+above|(?:given|shown|mentioned|listed|described)\s+above)\b",
        # "Read the passage and answer", "Refer to the document", "What does the passage say": an instruction
        # that sends its reader to a text.
        rf"\b(?:read|refer\s+to|see|consult|check|use|using|reading)\s+the\s+{_UNSEEN}\b",
        rf"\b(?:does|did|do)\s+the\s+{_UNSEEN}s?\s+(?:say|mention|state|describe|explain|suggest|claim|list|note)\b",
        r"\bthe\s+(?:passage|excerpt|snippet|chunk)s?\b",
        r"\b(?:listed|shown|mentioned|described|given|discussed)\s+here\b",
        r"\b(?:this|the)\s+readme\b|\bthe\s+author\s+of\s+th(?:is|e)\b",
    )
]


def instruction_mentions_context(instruction: str) -> bool:
    """The instruction refers to a source its reader never sees ("According to the text, ...", "Summarize the
    above.", "Pick three features from the list"). The answer's "the original text" is not one here: a question
    may ask about the original text a tokenizer aligns with."""
    return any(p.search(instruction) for p in (*_LEANING_ON_CONTEXT, *_INSTRUCTION_CONTEXT))


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_TEMPLATE_TOKEN = re.compile(r"<\|[a-z_]+\|>|\[/?INST\]|###\s*(?:Instruction|Response|Input)\b", re.I)
_MARKUP = frozenset("[]{}<>|\\/_=#*~`^")
_PLAIN_WORD = re.compile(
    r"^[(\"'\[]*(?:[A-Za-z][a-z]*(?:['\u2019-][a-z]+)*|[A-Z]{2,}s?|\d+(?:[.,]\d+)*%?)[.,;:!?)\"'\]]*$"
)
# A name from code (ShellDetectionFailure, SFTTrainer, load_dotenv, os.environ): at most five capitalised parts,
# no run of hex-like characters, not wrapped in brackets.
_IDENTIFIER = re.compile(r"^[(\"'`]*[A-Za-z_][A-Za-z0-9_.]*(?:\(\))?[.,;:!?)\"'`]*$")
_CAMEL_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_HEX_RUN = re.compile(r"(?=[0-9A-F]*\d)(?=[0-9A-F]*[A-F])[0-9A-F]{5,}")


_LETTERS = re.compile(r"^[(\"'\[«„]*[^\W\d_]+(?:['\u2019-][^\W\d_]+)*[.,;:!?)\"'\]»\u3002\u3001\uff0c\uff01\uff1f]*$")


def _reads_as_word(token: str) -> bool:
    if _PLAIN_WORD.match(token):
        return True
    if not token.isascii() and _LETTERS.match(token):  # a word of another script (Cyrillic, accented, CJK runs)
        return True
    if not _IDENTIFIER.match(token) or _HEX_RUN.search(token):
        return False
    return all(len(_CAMEL_PART.findall(part)) <= 5 for part in re.split(r"[_.]", token))


# Words English doubles ("that that", "had had"); any other word twice in a row is a generator's stutter.
_DOUBLED = frozenset({"that", "had", "is", "do", "can", "very", "bye", "no", "yes", "ha"})
# A sentence that ends on an article ("... on like a With 3D datasets the."): scrambled word order.
_ENDS_ON_ARTICLE = re.compile(r"\b(?:the|a|an)\s*[.!?](?:\s|$)", re.I)


def is_gibberish(text: str) -> bool:
    """Word salad, broken markup and runs of identifiers, as small generators emit them: text of another script
    spliced into Latin prose, chat-template tokens, a word repeated in a row (twice, for a word English does
    not double), a sentence ending on an article, markup characters over a tenth of the text, or too few tokens
    that read as plain words (identifier soup)."""
    text = text.strip()
    if not text:
        return False
    latin = sum(c.isascii() and c.isalpha() for c in text)
    if _CJK.search(text) and latin > len(_CJK.findall(text)):
        return True
    if _TEMPLATE_TOKEN.search(text):
        return True
    tokens = text.split()
    lowered = [t.lower().strip(".,;:!?") for t in tokens]
    if any(a == b == c and a.isalpha() for a, b, c in zip(lowered, lowered[1:], lowered[2:], strict=False)):
        return True
    bare = [t.lower() for t in tokens]  # "it; it" is two clauses, not a word twice
    if any(a == b.rstrip(".,;:!?") and a.isalpha() and a not in _DOUBLED for a, b in itertools.pairwise(bare)):
        return True  # "the the", "dataset dataset": a word twice in a row, as scrambled text has it
    if _ENDS_ON_ARTICLE.search(text):
        return True
    if sum(c in _MARKUP for c in text) > 0.1 * len(text):
        return True
    return sum(_reads_as_word(t) for t in tokens) < 0.6 * len(tokens)


_FINAL = re.compile(r"""[.!?:;)\]"'`*…\u3002\uff01\uff1f\u300d\u300f\uff09]$""")
_DANGLING_WORDS = """a an the and or but of to in on at by for with from as that which who whose when where than then
its their is are was were be been has have had can will would should could may might must not no"""
_DANGLING = frozenset(_DANGLING_WORDS.split())


def cut_word(answer: str, source: str) -> bool:
    """The answer, without final punctuation, ends on the start of a source's word that is not a word of the
    source itself ("... functionalities of cla" where the source says "classic"): cut mid-word."""
    text = answer.rstrip()
    if _FINAL.search(text) or not text:
        return False
    last = _words(text)[-1:] or [""]
    words = set(_words(source))
    return len(last[0]) >= 2 and last[0] not in words and any(w.startswith(last[0]) for w in words)


def looks_truncated(answer: str) -> bool:
    """The answer stops mid-sentence: no final punctuation, and it ends on a comma or a word that cannot end a
    sentence ("... and", "... the"), follows a clause or a sentence, or runs to seven words or more. A short
    label-like answer without a full stop ("The capital of France is Paris", "Paris") is not cut."""
    text = answer.rstrip()
    if _FINAL.search(text):
        return False
    words = text.split()
    last = words[-1].lower() if words else ""
    return text.endswith(",") or last in _DANGLING or ", " in text or ". " in text or len(words) >= 7


def copies_answer(instruction: str, answer: str) -> bool:
    """The instruction is a run of six or more of the answer's own words covering nine tenths of it: a statement
    lifted from the answer (as a weak back-translator writes), not something a user would ask."""
    asked, said = _words(instruction), _words(answer)
    if len(asked) < 6:
        return False
    text = f" {' '.join(said)} "
    shortest = max(6, -(-9 * len(asked) // 10))  # only runs of nine tenths of the instruction or more count
    return any(
        f" {' '.join(asked[i : i + n])} " in text
        for n in range(len(asked), shortest - 1, -1)
        for i in range(len(asked) - n + 1)
    )


# What a request opens with: an imperative of an instruction set's tasks, at the start of any clause ("Using
# pandas, read a CSV file"), or a question word or an auxiliary at its very start (a question without its mark:
# "How do I install it"); an adverb may come first ("Briefly explain ...").
_IMPERATIVES = frozenset(
    re.findall(
        r"[a-z]+",
        """
    add adapt analyse analyze answer apply arrange assess brainstorm build calculate categorise categorize change
    check choose cite classify combine compare compose compute condense configure construct contrast convert
    correct count create debug decide declare define demonstrate derive describe design detail determine develop
    diagnose differentiate discuss distinguish draft draw edit elaborate enumerate estimate evaluate explain
    express extract figure fill find fix follow format formulate generate give group guess highlight identify
    illustrate implement improve infer insert interpret introduce investigate justify label list locate make map
    match mention merge modify name note offer optimise optimize order organise organize outline paraphrase pick
    plan please point predict prepare present propose prove provide put rank rate read recommend refactor
    reformulate rephrase replace report respond restate review revise rewrite run say select show simplify solve
    sort specify state suggest summarise summarize tell translate turn use verify walk write
    """,
    )
)
_QUESTION_WORDS = frozenset(
    re.findall(
        r"[a-z]+",
        """
    what whats how why when where which who whom whose whether is are was were am do does did can could should
    would will shall may might must have has had
    """,
    )
)
_CLAUSE = re.compile(r"(?:^|[,:;.!]\s+|\n)[\"'(\[]*([A-Za-z]+)(?:\s+([A-Za-z]+))?")


def is_request(instruction: str) -> bool:
    """The instruction asks for something: it has a question mark, or it opens with a question word, or one of
    its clauses opens with an imperative ("Summarize the release notes.", "Using pandas, read a CSV file"). A
    statement ("The LoRA adapter provides improved performance.") or a bare heading ("Building an instruction
    dataset") is not one: a weak back-translator writes those. English only, as the word lists are."""
    if "?" in instruction or "\uff1f" in instruction:
        return True
    for i, (first, second) in enumerate(_CLAUSE.findall(instruction.strip())):
        word = (second if first.casefold().endswith("ly") and second else first).casefold()
        if word in _IMPERATIVES or (i == 0 and word in _QUESTION_WORDS):
            return True
    return False


def drop_reason(instruction: str, answer: str, spec: QualitySpec, source: str = "") -> str | None:
    """The first check the sample fails, or ``None``. The order: instruction_too_short, answer_too_short,
    answer_too_long, gibberish, refusal, mentions_context (in the answer or the instruction), truncated,
    restates_instruction, repeated_ngrams, non_alpha, copies_answer, not_a_request. ``source``, where known,
    shows an answer cut mid-word (truncated). Lengths count the stripped characters; the ``drop_*`` fields
    switch their checks off, ``enabled: false`` all of them."""
    if not spec.enabled:
        return None
    instruction, answer = instruction.strip(), answer.strip()
    if len(instruction) < spec.min_instruction_chars:
        return "instruction_too_short"
    if len(answer) < spec.min_answer_chars:
        return "answer_too_short"
    if len(answer) > spec.max_answer_chars:
        return "answer_too_long"
    if spec.drop_gibberish and (is_gibberish(instruction) or is_gibberish(answer)):
        return "gibberish"
    if spec.drop_refusals and is_refusal(answer):
        return "refusal"
    if spec.drop_context_references and (mentions_context(answer) or instruction_mentions_context(instruction)):
        return "mentions_context"
    if spec.drop_truncated and (looks_truncated(answer) or cut_word(answer, source)):
        return "truncated"
    if spec.drop_restated_instructions and restates_instruction(instruction, answer):
        return "restates_instruction"
    if repeated_ngram_ratio(answer) > spec.max_repeated_ngram_ratio:
        return "repeated_ngrams"
    if non_alpha_ratio(answer) > spec.max_non_alpha_ratio:
        return "non_alpha"
    if spec.drop_restated_instructions and copies_answer(instruction, answer):
        return "copies_answer"
    if spec.drop_non_requests and not is_request(instruction):
        return "not_a_request"
    return None
