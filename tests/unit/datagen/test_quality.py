"""Heuristic quality filters: each reason caught on a realistic sample, and spared on a close good one."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1.datasetbuild import QualitySpec
from kubetune.datagen import quality

QUESTION = "What does low-rank adaptation train during fine-tuning?"
GOOD = "It trains two small matrices per layer while the pretrained weights stay frozen."


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with that request.",
        "I\u2019m sorry, but I can\u2019t help with that.",
        "Sorry, as an AI I have no opinion on this.",
        "As an AI language model, I do not have personal opinions.",
        "As an AI, I cannot answer that.",
        "I cannot provide medical advice; please see a doctor.",
        "Unfortunately, I am unable to answer questions about this topic.",
        "I don't have access to the internet, so I cannot check.",
        "Good question. I'm not able to help with that.",
    ],
)
def test_refusals(answer):
    assert quality.is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "I cannot stress enough how important a learning-rate warm-up is.",
        "As an AI researcher, Geoffrey Hinton popularised backpropagation.",
        "Sorry is one of the most common words in British English.",
        "The error message reads: cannot provide credentials for this host.",
        "Unfortunately, the bridge collapsed in 1940 after strong winds.",
        "The researchers did not have access to the original data, so they rebuilt it.",
    ],
)
def test_not_refusals(answer):
    assert not quality.is_refusal(answer)


@pytest.mark.parametrize(
    ("answer", "mentions"),
    [
        ("According to the text, vim has a modal interface.", True),
        ("The text editor vim has a modal interface.", False),
        ("The passage says that adapters are trained.", True),
        ("The Northwest Passage is frozen for most of the year.", False),
        ("Based on the provided information, it trains adapters.", True),
        ("In the context of databases, a transaction is atomic.", False),
        ("This is explained in the document.", True),
        ("The document was signed in 1215 at Runnymede.", False),
        ("As mentioned in the excerpt, the base is frozen.", True),
        ("Which one to choose depends on the context.", False),
        ("The given context does not say.", True),
        ("The article describes three methods of quantization.", True),
        ("Based on the provided documentation, it trains adapters.", True),
        ("The documentation given lists two flags.", True),
        ("See the reference documentation for the full list of flags.", False),
        ("The information provided by os.stat is cached.", False),
        ("It records the following details: the name and the size.", False),
    ],
)
def test_mentions_context(answer, mentions):
    assert quality.mentions_context(answer) is mentions


@pytest.mark.parametrize(
    ("instruction", "answer", "restates"),
    [
        (QUESTION, QUESTION, True),
        (QUESTION, "what does low rank adaptation train during fine tuning", True),
        (QUESTION, "Low-rank adaptation: what does it train during fine-tuning?", True),
        ("Explain what LoRA trains, in one sentence.", "Explain what LoRA trains", True),
        (QUESTION, GOOD, False),
        ("What is the capital of France?", "The capital of France is Paris.", False),
        ("Which is larger, the Sun or the Moon?", "The Sun", False),
    ],
)
def test_restates_instruction(instruction, answer, restates):
    assert quality.restates_instruction(instruction, answer) is restates


def test_ratios():
    assert quality.repeated_ngram_ratio("a b c a b c") == pytest.approx(1 / 4)
    assert quality.repeated_ngram_ratio("A b. C") == 0.0 and quality.repeated_ngram_ratio("") == 0.0
    assert quality.non_alpha_ratio("ab!? ") == pytest.approx(0.5)
    assert quality.non_alpha_ratio("   ") == 0.0


@pytest.mark.parametrize(
    ("instruction", "answer", "reason"),
    [
        ("Why?", GOOD, "instruction_too_short"),
        (QUESTION, "Two matrices.", "answer_too_short"),
        (QUESTION, "x" * 4001, "answer_too_long"),
        (QUESTION, "I'm sorry, but I cannot help with that request.", "refusal"),
        (QUESTION, "According to the text, it trains two small matrices per layer.", "mentions_context"),
        (QUESTION, QUESTION, "restates_instruction"),
        (QUESTION, "It trains the adapters and it trains the adapters and it trains the adapters.", "repeated_ngrams"),
        (QUESTION, "It trains: {A, B} -> [W + A*B] ~ (r=16); <frozen>!!", "gibberish"),
        (QUESTION, "It trains two small matrices of rank sixteen!!! (r=16)???!!! ... ... ... !!!", "non_alpha"),
        (QUESTION, "[[ForModularBacEditPurpose6E5FF4]] and more [[ModularBac]] things.", "gibberish"),
        (QUESTION, "It trains two matrices \u7b0f\u84b8 per layer, the rest stays frozen.", "gibberish"),
        (QUESTION, "Core Core Core SQL SQL SQL expression expression language.", "gibberish"),
        (QUESTION, "LoRA trains two small matrices per layer and the rest of the", "truncated"),
        (
            "According to the text, what does LoRA stand for?",
            "Low-rank adaptation of large language models.",
            "mentions_context",
        ),
        (
            "From the documentation given, what does LoRA stand for?",
            "Low-rank adaptation of large language models.",
            "mentions_context",
        ),
        (
            "Using the information above, what does LoRA train?",
            "Two small matrices per layer; the rest stays frozen.",
            "mentions_context",
        ),
        (
            "Summarize the above.",
            "LoRA trains two small matrices per layer and keeps the rest frozen.",
            "mentions_context",
        ),
        (
            "What happens when Shellingham cannot detect the surrounding shell?",
            "Shellingham's detect_shell raises ShellDetectionFailure.",
            None,
        ),
        (
            "fine-tuning is cheaper than pretraining by several orders of magnitude,",
            "Fine-tuning is cheaper than pretraining by several orders of magnitude: pretraining takes thousands of "
            "accelerators for weeks, while an adapter trains on one GPU in hours.",
            "copies_answer",
        ),
        (
            "Is custom function support in jmespath.py stable?",
            "No. Custom function support in jmespath.py is experimental, and its API may change.",
            None,
        ),
        (
            "Can Hugging Face Tokenizers map a token back to the original text?",
            "Yes: normalization tracks alignments, so each token maps back to its span.",
            None,
        ),
        (QUESTION, "I don't know what low-rank adaptation trains.", "refusal"),
        (QUESTION, "It trains the the two small matrices of each layer.", "gibberish"),
        (QUESTION, "Adapters on like a With small matrices the. Frozen rest trains.", "gibberish"),
        ("Read the passage and answer: what does LoRA train?", GOOD, "mentions_context"),
        ("What does the document say LoRA trains?", GOOD, "mentions_context"),
        ("Which of the methods listed here train adapters?", GOOD, "mentions_context"),
        ("What does the author of this README say LoRA trains?", GOOD, "mentions_context"),
        ("Had had the model been frozen, what would LoRA train?", GOOD, None),
        (QUESTION, GOOD, None),
        (QUESTION, "I cannot stress enough that it trains two small matrices per layer.", None),
        (QUESTION, "The text editor vim has nothing to do with it; it trains adapters.", None),
        # What SmolLM2-135M wrote as back-translated instructions for the quickstart's documents: statements.
        ("The LoRa Adapter provides improved performance by utilizing data compression.", GOOD, "not_a_request"),
        ("Building an instruction dataset", GOOD, "not_a_request"),
        ("LoRA is efficient, which is why it is used", GOOD, "not_a_request"),
        ("Briefly explain what LoRA trains.", GOOD, None),
        ("Using the peft library, describe what LoRA trains", GOOD, None),
        ("How does LoRA keep the base model frozen", GOOD, None),
    ],
)
def test_drop_reason(instruction, answer, reason):
    assert quality.drop_reason(instruction, answer, QualitySpec()) == reason


def test_first_failed_check_wins():
    # Too short, a refusal and a context reference at once: the length check comes first.
    assert quality.drop_reason(QUESTION, "Sorry, I cannot.", QualitySpec()) == "answer_too_short"
    # A refusal that also mentions the text: refusal comes before mentions_context.
    both = "I'm sorry, but I cannot answer; the text does not say."
    assert quality.drop_reason(QUESTION, both, QualitySpec()) == "refusal"
    assert quality.drop_reason(QUESTION, both, QualitySpec(drop_refusals=False)) == "mentions_context"
    # A restatement that is also mostly punctuation: restates_instruction comes before non_alpha.
    shouted = "What does low-rank adaptation train?!?!?!?!?!?!?!?!?!?!?!?!"
    assert quality.drop_reason("What does low-rank adaptation train?", shouted, QualitySpec()) == "restates_instruction"
    assert quality.non_alpha_ratio(shouted) > 0.25
    # The question said twice is too long for a restatement, but half its 3-grams repeat.
    assert quality.drop_reason(QUESTION, f"{QUESTION} {QUESTION}", QualitySpec()) == "repeated_ngrams"


def test_switches_turn_their_checks_off():
    off = QualitySpec(
        drop_refusals=False, drop_context_references=False, drop_restated_instructions=False, drop_gibberish=False
    )
    for answer in ("I'm sorry, but I cannot help with that request.", "According to the text, it trains adapters."):
        assert quality.drop_reason(QUESTION, answer, off) is None
    assert quality.drop_reason(QUESTION, QUESTION, off) is None
    assert quality.drop_reason("Why?", "x", QualitySpec(enabled=False)) is None
    heading = "Les adaptateurs de rang faible"  # a French instruction: the English word list cannot tell
    assert quality.drop_reason(heading, GOOD, QualitySpec()) == "not_a_request"
    assert quality.drop_reason(heading, GOOD, QualitySpec(drop_non_requests=False)) is None
    lenient = QualitySpec(max_repeated_ngram_ratio=1.0, max_non_alpha_ratio=1.0, drop_gibberish=False)
    assert quality.drop_reason(QUESTION, "It trains: {A, B} -> [W + A*B] ~ (r=16); <frozen>!!", lenient) is None


def test_an_answer_cut_mid_word_is_truncated_when_the_source_shows_the_word():
    source = "psutil implements many functionalities offered by classic UNIX command line tools."
    cut = "psutil implements many functionalities of cla"
    assert quality.drop_reason("What does psutil reimplement?", cut, QualitySpec(), source) == "truncated"
    assert quality.drop_reason("What does psutil reimplement?", cut, QualitySpec()) is None  # no source, no proof
    assert not quality.cut_word("psutil reimplements classic UNIX tools", source)  # "tools" is a whole word
