"""Grounding and semantic dedup on real rows of the labelled bench (bench/quality): each check's scores on a
good row and on the bad rows it is meant to catch, with the real all-MiniLM-L6-v2 embedding model."""

from __future__ import annotations

import pytest

from kubetune.datagen import grounding
from kubetune.llm import embeddings


def _first(rows: list[dict], kind: str) -> dict:
    return next(r for r in rows if r["kind"] == kind)


def test_content_words_leave_out_function_words_and_stem():
    assert grounding.content_words("The libraries handle retries for you.") == ["library", "handle", "retry"]
    assert grounding.content_words("It is 3.12 or later.") == ["3.12", "later"]


def test_lexical_support_separates_a_good_row_from_one_attached_to_another_source(labelled):
    good, wrong = _first(labelled, "good"), _first(labelled, "wrong_source")
    assert grounding.lexical_support(good["answer"], good["source"]) >= 0.5
    assert grounding.lexical_support(wrong["answer"], wrong["source"]) < 0.5
    assert grounding.lexical_support("Yes.", "anything") == 1.0  # no claim to check


def test_a_figure_the_source_does_not_hold_is_unsupported():
    source = "Requests officially supports Python 3.10+ and is depended upon by 4,000,000+ repositories."
    assert grounding.unsupported_numbers("Requests supports Python 3.8 and newer.", source) == ["3.8"]
    assert grounding.unsupported_numbers("About 400,000 repositories use it.", source) == ["400000"]
    assert grounding.unsupported_numbers("It runs on Python 3.10 in 4,000,000 repositories.", source) == []
    assert grounding.unsupported_numbers("1. Install it.\n2. Use it in 3 steps.", source) == []  # markers, counts


def test_unsupported_numbers_catch_contradictions_and_spare_good_rows(labelled):
    flagged = {
        kind: [bool(grounding.unsupported_numbers(r["answer"], r["source"])) for r in labelled if r["kind"] == kind]
        for kind in ("good", "contradiction")
    }
    assert not any(flagged["good"])
    assert sum(flagged["contradiction"]) >= len(flagged["contradiction"]) / 6  # 9 of 48 at this writing


def test_a_name_the_source_never_mentions_is_unknown(labelled):
    source = "QLoRA quantises the base model to 4-bit NormalFloat and trains LoRA adapters in 16-bit precision."
    assert grounding.unknown_terms("How does QLOA avoid FFXI optimization?", source) == ["QLOA", "FFXI"]
    assert grounding.unknown_terms("How does qlora train LoRa adapters on a GPU?", source) == []  # case aside
    assert grounding.unknown_terms("What does QLoRA keep in 16-bit precision?", source) == []
    # On the bench's good rows it is rare (a question naming the package its passage never does).
    good = [r for r in labelled if r["kind"] == "good"]
    assert sum(bool(grounding.unknown_terms(r["instruction"], r["source"])) for r in good) <= 2


def test_windows_cover_the_source_in_overlapping_runs_of_sentences():
    source = "One. Two. Three. Four. Five. Six."
    assert grounding.windows(source, sentences=3) == ["One. Two. Three.", "Three. Four. Five.", "Five. Six."]
    assert grounding.windows("no sentence end", sentences=3) == ["no sentence end"]


@pytest.fixture(scope="module")
def embedder(minilm):
    return embeddings.Embedder(str(minilm))


def test_a_folder_that_is_not_a_sentence_transformers_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no modules\.json"):
        embeddings.Embedder(str(tmp_path))


def test_similarity_to_the_source_is_high_for_good_rows_and_low_for_word_salad_and_other_sources(
    labelled, embedder
):  # fmt: skip
    rows = [r for r in labelled if r["kind"] == "good"][:10] + [r for r in labelled if r["kind"] == "wrong_source"][:10]
    scores = grounding.similarity_scores(embedder, rows, [r["source"] for r in rows])
    good, wrong = scores[:10], scores[10:]
    assert min(a for a, _ in good) > max(a for a, _ in wrong)  # the answers
    assert sum(i for _, i in good) / 10 > sum(i for _, i in wrong) / 10 + 0.3  # the instructions


def test_semantic_duplicates_keep_the_better_grounded_of_a_pair(labelled, embedder):
    by_id = {r["id"]: r for r in labelled}
    paraphrase = _first(labelled, "paraphrase_duplicate")
    original = by_id[paraphrase["duplicate_of"]]
    other = next(r for r in labelled if r["kind"] == "good" and r["source_id"] != original["source_id"])
    samples = [paraphrase, original, other]
    assert grounding.semantic_duplicates(embedder, samples, 0.8) == [None, 0, None]  # the first of the pair kept
    assert grounding.semantic_duplicates(embedder, samples, 0.8, preference=[0.1, 0.9, 0.5]) == [1, None, None]
    assert grounding.semantic_duplicates(embedder, samples, 0.999) == [None, None, None]


def test_fluent_nonsense_is_unlikely_given_its_source_and_a_good_answer_is_not(labelled, smollm2):
    """SmolLM2-135M-Instruct's mean log-probability per answer token, given the source and the question: fluent
    word salad no heuristic catches falls below the default floor, the good rows of the same passages do not."""
    from kubetune.api.v1alpha1.datasetbuild import GroundingSpec
    from kubetune.llm import likelihood

    floor = GroundingSpec().min_answer_log_prob
    by_id = {r["id"]: r for r in labelled}
    salad = [by_id[i] for i in ("q0097", "q0130", "q0154", "q0251")]
    good = [r for r in labelled if r["kind"] == "good"][:6]
    scores = likelihood.answer_logprobs(
        str(smollm2), [(r["source"], r["instruction"], r["answer"]) for r in salad + good]
    )
    assert all(s < floor for s in scores[: len(salad)]), scores
    assert all(s > floor for s in scores[len(salad) :]), scores
    # Without its source (the question alone), a good answer is less likely: the source is what explains it.
    alone = likelihood.token_logprobs(str(smollm2), [(None, r["instruction"], r["answer"]) for r in good])
    assert all(sum(t) / len(t) < s for t, s in zip(alone, scores[len(salad) :], strict=True)), (alone, scores)
