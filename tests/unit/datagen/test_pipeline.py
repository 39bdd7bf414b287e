"""The DatasetBuild stages on small corpora: what each keeps, what it drops and why, resume and shards.

The LLM is replaced here by a scripted engine that answers each request by a rule of the test: these tests
are about what the pipeline does with good, broken, duplicate, contaminated and low-quality answers, which a
real model would not produce on demand. Real engines are exercised in tests/e2e: vLLM offline (SmolLM2, the
quickstart) and a real ``vllm serve`` through the endpoint backend (test_endpoint.py, test_datagen_resume.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest

from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
from kubetune.datagen import card, formatting, generate, pipeline
from kubetune.datagen.stage_store import StaleOutputError
from kubetune.llm.chat import Completion, Request

LORA = (
    "Low-rank adaptation trains two small matrices per layer while the base model stays frozen. "
    "The product of the two matrices is added to the frozen weight, so the adapter costs little memory. "
    "A rank of sixteen is a common first choice, and the scaling factor alpha is often twice the rank. "
)
QLORA = (
    "Quantized low-rank adaptation stores the frozen base model in four-bit NormalFloat precision. "
    "Double quantization compresses the quantization constants themselves to save more memory. "
    "Paged optimizers move optimizer states to CPU memory when the GPU runs short during a spike. "
)
DPO = (
    "Direct preference optimization learns from pairs of a chosen and a rejected answer to one prompt. "
    "It needs no separate reward model, because the policy's own log probabilities define the reward. "
    "The beta parameter controls how far the policy may move away from the frozen reference model. "
)

EVALUATION = (
    "Held-out evaluation loss measures how well a model predicts answers it never trained on. "
    "Perplexity is the exponential of that loss, and lower values mean more confident predictions. "
    "Generations from the base and the tuned model on the same prompts show what changed in practice. "
)


def answer(*pairs: tuple[str, ...]) -> str:
    keys = ("instruction", "answer", "extract")
    return json.dumps({"pairs": [dict(zip(keys, p, strict=False)) for p in pairs]})


def kind(request: Request) -> str:
    props = request.schema["properties"]
    if "pairs" in props:
        return "samples"
    if "style" in props:
        return "judge"
    return "answer" if "answer" in props else "evolve"


class ScriptedEngine:
    """Answers each request with ``respond(request)``, recording every request it was asked."""

    def __init__(self, respond: Callable[[Request], Completion]):
        self.respond = respond
        self.asked: list[Request] = []

    def complete(self, requests: list[Request]) -> list[Completion]:
        self.asked.extend(requests)
        return [self.respond(r) for r in requests]

    def count(self, what: str) -> int:
        return sum(kind(r) == what for r in self.asked)


def by_topic(samples: dict[str, str], default: Callable[[Request], Completion] | None = None):
    """A responder: a chunk about a topic (a key found in the chunk) gets that topic's scripted samples."""

    def respond(request: Request) -> Completion:
        text = request.messages[-1]["content"]
        if kind(request) == "samples":
            for key, completion in samples.items():
                if key in text:
                    return Completion(completion, "stop", 40)
            return Completion(answer(("What is this passage about?", "It is about adapters and training.")), "stop", 9)
        assert default is not None, f"unexpected request {request.schema}"
        return default(request)

    return respond


def write_corpus(tmp_path, docs: dict[str, str]):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


def make_spec(folder, tiny_model, **overrides) -> DatasetBuildSpec:
    wire = {
        "source": {"paths": [str(folder)]},
        "cleaning": {"minDocumentChars": 100},
        "chunking": {"minChars": 200, "maxChars": 400},
        "dedup": {"near": {"shingleSize": 3}},
        "generation": {"model": str(tiny_model), "pairsPerChunk": 2, "batchSize": 2},
        "split": {"testSize": 0.34, "seed": 1},
        # The scripted engines' answers are not written from their chunks: grounding is tested on its own
        # (test_grounding.py) and on labelled rows through kubetune run (tests/e2e/test_curation.py).
        "curation": {"grounding": {"enabled": False}},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            wire.setdefault(section, {})[field] = value
        elif isinstance(value, dict) and isinstance(wire.get(section), dict):
            wire[section] = {**wire[section], **value}
        else:
            wire[section] = value
    return DatasetBuildSpec.model_validate(wire)


def run(spec, out, engine, **kw):
    return pipeline.build(spec, out, name="tiny", engine_factory=lambda *_a, **_k: engine, log=lambda _: None, **kw)


GOOD = {
    "Low-rank adaptation": answer(
        ("What does low-rank adaptation train?", "It trains two small matrices per layer; the base model is frozen."),
        ("What rank is a common first choice?", "A rank of sixteen, with alpha often twice the rank."),
    ),
    "Quantized low-rank": answer(
        ("How does QLoRA store the base model?", "In four-bit NormalFloat precision, frozen during training."),
        ("What do paged optimizers do?", "According to the text, they move optimizer states to CPU memory."),
    ),
    "Direct preference": answer(
        ("What does DPO learn from?", "I'm sorry, but I cannot help with that request."),
        ("What does beta control in DPO?", "How far the policy may move from the frozen reference model."),
    ),
}


def test_instruction_build_counts_every_stage(tmp_path, tiny_model):
    near_copy = LORA.replace("common first choice", "usual first choice")
    folder = write_corpus(
        tmp_path,
        {
            "lora.md": "# LoRA\n\n" + LORA,
            "lora-copy.md": "# LoRA\n\n" + LORA,  # an exact copy
            "lora-near.md": "# LoRA\n\n" + near_copy,  # a near copy: one phrase changed
            "qlora.txt": QLORA,
            "dpo.html": f"<html><head><style>p {{}}</style></head><body><p>{DPO}</p></body></html>",
            "short.txt": "too short",
        },
    )
    engine = ScriptedEngine(by_topic(GOOD))
    manifest = run(make_spec(folder, tiny_model), tmp_path / "out", engine)

    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == pipeline.planned_stages(make_spec(folder, tiny_model))
    assert "judge" not in stages and "evolve" not in stages and "decontaminate" not in stages, "only what ran"
    assert stages["ingest"]["input"] == stages["ingest"]["output"] == 6
    assert stages["clean"]["dropped"] == {"too_short": 1}
    assert stages["dedup_documents"]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert stages["generate"]["input"] == 3 == engine.count("samples"), "no LLM time on a copy"
    assert stages["quality"]["dropped"] == {"mentions_context": 1, "refusal": 1}
    assert stages["quality"]["output"] == 4

    train = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "out" / "test.parquet").to_pylist()
    assert len(train) + len(test) == 4
    assert not {r["source"] for r in train} & {r["source"] for r in test}, "a document never straddles the split"
    row = train[0]
    assert {"messages", "prompt", "completion", "source", "chunk_id", "origin"} <= set(row)
    assert row["origin"] == "generated" and row["source"].startswith(str(folder))
    assert row["completion"] == row["answer"] + "<|im_end|>\n"

    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.startswith("---\nlicense: other\n")
    assert "| quality | 6 | 4 | 1 mentions_context, 1 refusal |" in readme
    assert "`source`: the document" in readme
    assert (tmp_path / "out" / "funnel.png").read_bytes()[:4] == b"\x89PNG"


def test_judge_scores_and_drops_below_the_threshold(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA})
    samples = {
        "Low-rank adaptation": answer(
            ("What does LoRA train?", "Two small matrices per layer; the base stays frozen.")
        ),
        "Quantized low-rank": answer(("How is the base stored in QLoRA?", "In four-bit NormalFloat, kept frozen.")),
    }

    def grade(request: Request) -> Completion:
        body = request.messages[-1]["content"]
        assert request.temperature == 0.0 and "faithfulness" in request.messages[0]["content"]
        assert body.startswith("Source: "), "the judge reads the chunk the sample was written from"
        # QLoRA's answer is unfaithful (a 3 passes minScore 3, not its own floor of 4); LoRA's is a 4 on style.
        faithful = 3 if "four-bit" in body else 5
        return Completion(json.dumps({"reason": "checked", "faithfulness": faithful, "helpfulness": 5, "style": 4}),
                          "stop", 8)  # fmt: skip

    engine = ScriptedEngine(by_topic(samples, grade))
    judged = {"enabled": True, "minScore": 3, "minScores": {"faithfulness": 4}}
    spec = make_spec(folder, tiny_model, curation={"judge": judged}, split={"testSize": 0.0})
    manifest = run(spec, tmp_path / "out", engine)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["judge"]["dropped"] == {"low_faithfulness": 1} and stages["judge"]["output"] == 1
    (row,) = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert row["judge_score"] == 4 and row["judge_reason"] == "checked"
    assert (row["judge_faithfulness"], row["judge_helpfulness"], row["judge_style"]) == (5, 5, 4)


def test_evol_instruct_adds_rewrites_that_face_curation_again(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA, "dpo.md": DPO})
    clean = {
        k: v.replace("According to the text, they", "They").replace(
            "I'm sorry, but I cannot help with that request.", "From chosen and rejected answers."
        )
        for k, v in GOOD.items()
    }

    def respond(request: Request) -> Completion:
        if kind(request) == "evolve":
            original = request.messages[-1]["content"].removeprefix("Instruction: ")
            return Completion(json.dumps({"instruction": f"Explain step by step: {original}"}), "stop", 12)
        question = request.messages[-1]["content"].split("Question: ")[1]
        assert "Reference:" in request.messages[-1]["content"], "the answer is written from the same chunk"
        careful = f"A careful answer, given step by step, to a question of {len(question.split())} words."
        reply = "As an AI, I cannot answer that." if "beta" in question else careful
        return Completion(json.dumps({"answer": reply}), "stop", 12)

    engine = ScriptedEngine(by_topic(clean, respond))
    spec = make_spec(
        folder, tiny_model, augmentation={"evolInstruct": {"share": 0.5, "seed": 3}}, split={"testSize": 0.0}
    )
    manifest = run(spec, tmp_path / "out", engine)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert engine.count("evolve") == 3 == engine.count("answer"), "half of the six samples, one answer each"
    assert stages["evolve"]["input"] == 6 and stages["evolve"]["output"] == 9
    rows = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    evolved = [r for r in rows if r["origin"].startswith("evolved:")]
    assert evolved and all(r["instruction"].startswith("Explain step by step: ") for r in evolved)
    refused = sum("beta" in r.messages[-1]["content"] for r in engine.asked if kind(r) == "answer")
    assert stages["quality"]["dropped"].get("refusal", 0) == refused
    assert len(rows) == 9 - refused


def test_extract_preference_rows_are_verbatim_and_in_trl_format(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "dpo.md": DPO})
    extract = (
        "The product of the two matrices is added to the frozen weight, so the adapter costs little memory. "
        "A rank of sixteen is a common first choice, and the scaling factor alpha is often twice the rank."
    )
    short = "It needs no separate reward model, because the policy's own log probabilities define the reward."
    samples = {
        "Low-rank adaptation": answer(
            ("Why is a LoRA adapter cheap in memory?", "Because it is small, I think.", extract),
            ("What is the usual rank?", "Maybe eight or so.", extract[:120]),  # verbatim, but cut mid-sentence
        ),
        "Direct preference": answer(
            ("What does DPO need?", "Bananas and sunshine.", "It needs bananas at all times, as the paper says."),
            ("Why does DPO need no reward model?", "Nobody knows.", short),  # verbatim, 97 characters
        ),
    }
    engine = ScriptedEngine(by_topic(samples))
    spec = make_spec(folder, tiny_model, type="preference", split={"testSize": 0.0})
    manifest = run(spec, tmp_path / "out", engine)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["generate"]["dropped"] == {
        "extract_not_a_sentence": 1,
        "extract_not_verbatim": 1,
        "extract_too_short": 1,
    }
    (row,) = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert row["prompt"] == [{"role": "user", "content": "Why is a LoRA adapter cheap in memory?"}]
    assert row["chosen"] == [{"role": "assistant", "content": extract}]
    assert row["rejected"] == [{"role": "assistant", "content": "Because it is small, I think."}]
    assert manifest["type"] == "preference" and "dpo" in (tmp_path / "out" / "README.md").read_text()


def _run_judged(tmp_path, tiny_model, samples: dict, respond) -> tuple[ScriptedEngine, dict]:
    """A judged preference build of the LoRA and QLoRA documents, ``respond`` answering and judging: the engine
    (what it was asked) and the stages by name."""
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA})
    engine = ScriptedEngine(by_topic(samples, respond))
    spec = make_spec(
        folder,
        tiny_model,
        type="preference",
        preference={"method": "judged", "temperatures": [0.2, 1.0]},
        curation={"judge": {"enabled": True}},
        split={"testSize": 0.0},
    )
    manifest = run(spec, tmp_path / "out", engine)
    return engine, {s["name"]: s for s in manifest["stages"]}


def test_judged_preference_chooses_the_best_and_drops_ties(tmp_path, tiny_model):
    samples = {
        "Low-rank adaptation": answer(("What does LoRA train?", "Two small matrices per layer.")),
        "Quantized low-rank": answer(("How does QLoRA store weights?", "In four-bit NormalFloat precision.")),
    }

    def respond(request: Request) -> Completion:
        if kind(request) == "answer":  # a sentence of the chunk each: both sound, the judge alone tells them apart
            chunk = QLORA if "QLoRA" in request.messages[-1]["content"] else LORA
            sentence = chunk.split(". ")[0 if request.temperature == 0.2 else 1]
            return Completion(json.dumps({"answer": sentence + "."}), "stop", 9)
        judged = request.messages[-1]["content"].split("\n\nInstruction: ")[-1]  # not the chunk: what is judged
        # LoRA: the cold answer (the chunk's first sentence) is better; QLoRA: a tie.
        score = 4 if "QLoRA" in judged else (5 if "Low-rank adaptation trains" in judged else 2)
        return Completion(json.dumps({"reason": "r", "faithfulness": score, "helpfulness": 5, "style": 5}), "stop", 5)

    engine, stages = _run_judged(tmp_path, tiny_model, samples, respond)
    assert [r.temperature for r in engine.asked if kind(r) == "answer"] == [0.2, 1.0, 0.2, 1.0]
    assert stages["rank"]["dropped"] == {"tie": 1}
    (row,) = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert row["chosen"][0]["content"] == LORA.split(". ")[0] + "."
    assert row["rejected"][0]["content"] == LORA.split(". ")[1] + "."
    assert (row["chosen_score"], row["rejected_score"]) == (5, 2) and "rejected_flaw" not in row


def test_judged_preference_never_chooses_an_answer_the_curation_would_drop(tmp_path, tiny_model):
    """The judge (a small model's) prefers word salad and an answer from nowhere; the checks overrule it: a sound
    answer is chosen over a flawed one whatever the scores, and a pair with no sound answer is dropped."""
    samples = {
        "Low-rank adaptation": answer(("What does LoRA train?", "Two small matrices per layer.")),
        "Quantized low-rank": answer(("How does QLoRA store weights?", "In four-bit NormalFloat precision.")),
    }
    salad = "SOPPECADKR_DUMBERGUSA__0BOFNALEXXWOEMSPRESENTERA_GLEMINGBAIdUvLUTHOL32MEDIA+ [笏蒸喻][文数]](/.sine"
    cut = "Clarifications: Sep 13, 2020 4pm EDTes    New st project"  # what SmolLM2 once wrote, as chosen

    def respond(request: Request) -> Completion:
        if kind(request) == "answer":
            if "QLoRA" in request.messages[-1]["content"]:  # nothing sound to choose
                return Completion(json.dumps({"answer": salad if request.temperature == 0.2 else cut}), "stop", 9)
            sound = LORA.split(". ")[0] + "."
            return Completion(json.dumps({"answer": sound if request.temperature == 0.2 else salad}), "stop", 9)
        judged = request.messages[-1]["content"].split("\n\nInstruction: ")[-1]
        score = 5 if "SOPPECADKR" in judged else 3  # the judge prefers the salad
        return Completion(json.dumps({"reason": "r", "faithfulness": score, "helpfulness": 5, "style": 5}), "stop", 5)

    _, stages = _run_judged(tmp_path, tiny_model, samples, respond)
    assert stages["rank"]["dropped"] == {"no_sound_answer": 1}
    (row,) = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert row["chosen"][0]["content"] == LORA.split(". ")[0] + "."
    assert row["rejected"][0]["content"] == salad and row["rejected_flaw"] == "gibberish"
    assert (row["chosen_score"], row["rejected_score"]) == (3, 5)  # the judge's, kept as it gave them


def test_a_candidate_answer_is_checked_against_its_chunk_as_a_sample_is():
    from kubetune.datagen.pipeline import _flaw

    spec = DatasetBuildSpec.model_validate(
        {"type": "preference", "source": {"paths": ["x"]}, "generation": {"model": "m"}}
    )
    build = type("B", (), {"spec": spec})()
    question = "How does quantized low-rank adaptation store the base model?"
    sound = "It stores the frozen base model in four-bit NormalFloat precision."
    assert _flaw(build, question, sound, QLORA) is None
    elsewhere = "Bananas ripen faster in a paper bag because the fruit releases ethylene gas while it sits there."
    assert _flaw(build, question, elsewhere, QLORA) == "ungrounded"
    assert _flaw(build, question, "It stores the base model in 3-bit precision, 40 % smaller.", QLORA) == (
        "unsupported_number"
    )
    assert _flaw(build, question, "True,", QLORA) == "answer_too_short"


def test_judged_preference_needs_the_judge():
    with pytest.raises(ValueError, match=r"preference\.method judged needs curation\.judge\.enabled"):
        DatasetBuildSpec.model_validate(
            {
                "type": "preference",
                "preference": {"method": "judged"},
                "source": {"paths": ["x"]},
                "generation": {"model": "m"},
            }
        )


def test_decontamination_drops_chunks_and_samples_sharing_an_ngram(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA, "dpo.md": DPO})
    evals = tmp_path / "eval.jsonl"
    evals.write_text(
        json.dumps({"question": QLORA.split(". ")[1], "id": 1})
        + "\n"  # a chunk's sentence: the chunk goes
        + json.dumps(
            {"question": "Explain: how far the policy may move from the frozen reference model, exactly, and why?"}
        )
        + "\n"
    )
    engine = ScriptedEngine(by_topic(GOOD))
    spec = make_spec(
        folder,
        tiny_model,
        curation={"decontamination": {"evalSets": [{"path": str(evals), "fields": ["question"]}], "ngram": 8}},
        split={"testSize": 0.0},
    )
    manifest = run(spec, tmp_path / "out", engine)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["decontaminate_chunks"]["dropped"] == {"contaminated": 1}
    assert engine.count("samples") == 2, "no LLM time on a contaminated chunk"
    assert stages["decontaminate"]["dropped"] == {"contaminated": 1}, "the beta answer quotes the eval question"


def test_a_missing_eval_set_is_refused_before_any_stage(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA})
    spec = make_spec(
        folder, tiny_model, curation={"decontamination": {"evalSets": [{"path": str(tmp_path / "nope.jsonl")}]}}
    )
    with pytest.raises(pipeline.InputError, match=r"evalSets\[0\]\.path"):
        run(spec, tmp_path / "out", ScriptedEngine(by_topic(GOOD)))
    assert not (tmp_path / "out").exists()


def test_a_scoring_model_that_is_not_a_model_is_refused_before_any_stage(tmp_path):
    spec = DatasetBuildSpec.model_validate(
        {
            "source": {"paths": [str(tmp_path)]},
            "generation": {"model": "m"},
            "curation": {"scoringModel": str(tmp_path)},
        }
    )
    with pytest.raises(pipeline.InputError, match=r"spec\.curation\.scoringModel: .* holds no config\.json"):
        pipeline.check_inputs(spec)


def test_malformed_answers_are_asked_again_then_dropped(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA})
    attempts: dict[str, int] = {}

    def respond(request: Request) -> Completion:
        text = request.messages[-1]["content"]
        topic = "lora" if "Low-rank" in text else "qlora"
        attempts[topic] = attempts.get(topic, 0) + 1
        if topic == "lora" and attempts[topic] == 2:  # wrong once, right on the retry
            return Completion(GOOD["Low-rank adaptation"], "stop", 30)
        return Completion('{"pairs": [{"instr', "length", 512)  # qlora: cut every time

    engine = ScriptedEngine(respond)
    spec = make_spec(
        folder,
        tiny_model,
        generation={"model": str(tiny_model), "pairsPerChunk": 2, "malformedRetries": 2},
        split={"testSize": 0.0},
    )
    manifest = run(spec, tmp_path / "out", engine)
    assert attempts == {"lora": 2, "qlora": 3}
    assert manifest["retries"] == 3 and manifest["discardedTokens"] == 3 * 512
    generate_stage = next(s for s in manifest["stages"] if s["name"] == "generate")
    assert generate_stage["dropped"] == {"truncated_answer": 1} and generate_stage["output"] == 2
    seeds = [r.seed for r in engine.asked if "Quantized" in r.messages[-1]["content"]]
    assert len(set(seeds)) == 3, "each retry samples with a new seed"


class Killed(Exception):
    pass


def test_a_killed_build_resumes_from_its_parts_and_ends_with_the_same_digest(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA, "dpo.md": DPO, "eval.md": EVALUATION})
    spec = make_spec(folder, tiny_model, generation={"model": str(tiny_model), "pairsPerChunk": 2, "batchSize": 1})
    whole = run(spec, tmp_path / "whole", ScriptedEngine(by_topic(GOOD)))

    calls = []

    def dies_on_the_third_part(request: Request) -> Completion:
        calls.append(request)
        if len(calls) == 3:
            raise Killed
        return by_topic(GOOD)(request)

    with pytest.raises(Killed):
        run(spec, tmp_path / "out", ScriptedEngine(dies_on_the_third_part))
    assert sorted(p.name for p in (tmp_path / "out" / "stages" / "generate").glob("*.done.json")) == [
        "part-00000.done.json",
        "part-00001.done.json",
    ]
    again = ScriptedEngine(by_topic(GOOD))
    resumed = run(spec, tmp_path / "out", again)
    n_chunks = next(s["input"] for s in whole["stages"] if s["name"] == "generate")
    assert n_chunks == 4 and again.count("samples") == n_chunks - 2, "the two finished parts are not asked again"
    assert resumed["digest"] == whole["digest"]


def test_a_changed_document_reruns_the_stages_it_reaches_and_no_others(tmp_path, tiny_model):
    """Stage markers hold their input's digest: the second build, after one of four documents changed, asks the
    LLM about that document's chunk only, and the third, after an unreadable file was added, re-reads the files
    but replays every later stage, its input unchanged."""
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA, "dpo.md": DPO, "eval.md": EVALUATION})
    spec = make_spec(folder, tiny_model, generation={"model": str(tiny_model), "pairsPerChunk": 2, "batchSize": 1})
    first = ScriptedEngine(by_topic(GOOD))
    run(spec, tmp_path / "out", first)
    (folder / "dpo.md").write_text(DPO + " It needs a reference model.")
    second = ScriptedEngine(by_topic(GOOD))
    log: list[str] = []
    rebuilt = pipeline.build(spec, tmp_path / "out", name="tiny", engine_factory=lambda *_a, **_k: second,
                             log=log.append)  # fmt: skip
    assert second.count("samples") == 1, "only the changed document's chunk is asked about"
    assert any("3 of 4 parts kept from an earlier run" in line for line in log), log
    chunks = [json.loads(x) for x in (tmp_path / "out" / "stages" / "chunk.jsonl").read_text().splitlines()]
    assert any("It needs a reference model." in c["text"] for c in chunks)
    (folder / "notes.txt").write_bytes(b"\xff\xfe not text")
    third = ScriptedEngine(by_topic(GOOD))
    log.clear()
    again = pipeline.build(spec, tmp_path / "out", name="tiny", engine_factory=lambda *_a, **_k: third, log=log.append)
    assert third.asked == [] and again["digest"] == rebuilt["digest"]
    assert {s["name"]: s for s in again["stages"]}["ingest"]["dropped"] == {"not_utf8": 1}
    replayed = [line for line in log if "kept from an earlier run" in line]
    assert not any(line.startswith("[1/") for line in replayed) and len(replayed) >= 5, log


def test_shards_split_the_llm_work_and_the_merge_finishes_the_build(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA, "dpo.md": DPO})
    spec = make_spec(folder, tiny_model, generation={"model": str(tiny_model), "pairsPerChunk": 2, "batchSize": 1})
    whole = run(spec, tmp_path / "whole", ScriptedEngine(by_topic(GOOD)))
    shard_engines = [ScriptedEngine(by_topic(GOOD)) for _ in range(2)]
    for i, engine in enumerate(shard_engines):
        assert run(spec, tmp_path / "out", engine, shard=(i, 2)) is None
    assert [e.count("samples") for e in shard_engines] == [2, 1], "parts 0 and 2, then part 1"
    assert not (tmp_path / "out" / "train.parquet").exists(), "only the merge writes the dataset"
    merge = ScriptedEngine(by_topic(GOOD))
    merged = run(spec, tmp_path / "out", merge)
    assert merge.asked == [] and merged["digest"] == whole["digest"]


def test_an_output_folder_of_another_spec_is_refused(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA})
    run(make_spec(folder, tiny_model), tmp_path / "out", ScriptedEngine(by_topic(GOOD)))
    with pytest.raises(StaleOutputError, match="another spec"):
        run(make_spec(folder, tiny_model, split={"testSize": 0.5}), tmp_path / "out", ScriptedEngine(by_topic(GOOD)))


def test_plan_runs_the_stages_before_generation_and_writes_nothing(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA, "copy.md": LORA, "qlora.md": QLORA})
    spec = make_spec(folder, tiny_model, curation={"judge": {"enabled": True}})
    plan = pipeline.plan(spec)
    assert [s["name"] for s in plan.stages] == ["ingest", "clean", "dedup_documents", "chunk", "dedup_chunks"]
    assert plan.prompts == 2 and plan.prompt_tokens > 100
    assert plan.max_output_tokens == 2 * spec.generation.max_tokens
    assert plan.later_requests == {"judge": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_empty_result_fails_with_the_funnel_written(tmp_path, tiny_model):
    folder = write_corpus(tmp_path, {"lora.md": LORA})
    engine = ScriptedEngine(lambda r: Completion("garbage", "stop", 1))
    with pytest.raises(pipeline.EmptyDatasetError, match="no samples survived") as failed:
        run(make_spec(folder, tiny_model), tmp_path / "out", engine)
    # The cause in the message: the stage that kept nothing, and why.
    assert "generate dropped all 1 of its items (invalid_json 1)" in str(failed.value), failed.value
    funnel = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]
    assert funnel[-1]["name"] == "split" and any(s["dropped"].get("invalid_json") for s in funnel)


def test_split_is_seeded_grouped_and_holds_out_at_least_one_group():
    rows = [{"i": i, "source": f"doc{i // 2}"} for i in range(20)]
    train, test = formatting.split(rows, 0.1, seed=42)
    assert len(test) == 2 and len(train) == 18 and len({r["source"] for r in test}) == 1
    assert formatting.split(rows, 0.1, seed=42) == (train, test)
    assert formatting.split(rows, 0.1, seed=7) != (train, test)
    assert not {r["source"] for r in train} & {r["source"] for r in test}
    assert len(formatting.split(rows[:4], 0.1, seed=42)[1]) == 2, "one whole group of two"
    assert formatting.split(rows[:2], 0.5, seed=42)[1] == [], "one group cannot be split"


def test_card_size_category():
    assert card._size_category(999) == "n<1K" and card._size_category(1000) == "1K<n<10K"


@pytest.mark.parametrize(
    ("completion", "kept", "reason"),
    [
        pytest.param(
            Completion(answer(("What is LoRA used for?", "Training small adapters.")), "stop", 9), 1, None, id="valid"
        ),
        pytest.param(Completion('{"pairs": [{"instruction": "Wh', "length", 9), 0, "truncated_answer", id="truncated"),
        pytest.param(Completion("not json", "stop", 2), 0, "invalid_json", id="not-json"),
        pytest.param(Completion('{"items": []}', "stop", 2), 0, "wrong_shape", id="wrong-shape"),
        pytest.param(
            Completion('{"pairs": [{"instruction": "Why?", "answer": ""}]}', "stop", 2),
            0,
            "wrong_shape",
            id="empty-field",
        ),
    ],
)
def test_parse_samples_counts_what_it_drops(completion, kept, reason, tiny_model):
    dropped: dict[str, int] = {}
    spec = DatasetBuildSpec.model_validate({"source": {"paths": ["x"]}, "generation": {"model": str(tiny_model)}})
    chunk = generate.Chunk("c1", "doc", "text")
    assert len(generate.parse_samples(completion, chunk, spec, dropped)) == kept
    assert dropped == ({reason: 1} if reason else {})


def test_an_extract_copied_loosely_is_snapped_to_the_chunks_own_sentences():
    chunk = LORA + QLORA
    loose = "The product of both matrices is added to the frozen weights, so an adapter costs little memory"
    assert generate.verbatim_extract(loose, chunk) == (
        "The product of the two matrices is added to the frozen weight, so the adapter costs little memory."
    )
    two = "Double quantization compresses the constants. Paged optimizers move states to CPU memory in a spike."
    assert generate.verbatim_extract(two, chunk) == QLORA[QLORA.index("Double") :].strip()
    assert generate.verbatim_extract("Bananas are yellow and grow in bunches on large plants.", chunk) is None


def test_an_extract_not_in_the_chunk_falls_back_to_the_sentences_the_answer_came_from():
    chunk = LORA + QLORA
    found = generate.verbatim_extract(
        "Bananas are yellow.", chunk, answer="Paged optimizers move the optimizer states to CPU memory in spikes."
    )
    assert found is not None and found.startswith("Paged optimizers move optimizer states") and found in chunk


def test_editing_where_a_dataset_is_published_keeps_its_stages(tmp_path, tiny_model):
    """publish changes no stage's output: the folder is not refused as another spec's, and nothing is asked again."""
    folder = write_corpus(tmp_path, {"lora.md": LORA})
    first = run(make_spec(folder, tiny_model), tmp_path / "out", ScriptedEngine(by_topic(GOOD)))
    again = ScriptedEngine(by_topic(GOOD))
    spec = make_spec(folder, tiny_model, publish={"oci": [{"repository": "r.example/team/datasets"}]})
    assert run(spec, tmp_path / "out", again)["digest"] == first["digest"]
    assert again.asked == []


def test_backtranslation_answers_with_the_sources_own_sentences(tmp_path, tiny_model):
    """generation.method backtranslation: spans of each chunk are the answers, verbatim; the LLM writes only the
    instruction each answers (asked with the span alone); grounding then finds every answer fully supported."""
    folder = write_corpus(tmp_path, {"lora.md": LORA, "qlora.md": QLORA})

    def respond(request: Request) -> Completion:
        assert kind(request) == "evolve" and request.messages[-1]["content"].startswith("Answer: ")
        words = request.messages[-1]["content"].split()[1:5]
        return Completion(json.dumps({"instruction": f"What is said about {' '.join(words)}?"}), "stop", 9)

    engine = ScriptedEngine(respond)
    spec = make_spec(
        folder, tiny_model, generation={"method": "backtranslation"}, curation={"grounding": {"enabled": True}}
    )
    manifest = run(spec, tmp_path / "out", engine)
    rows = [r for split in ("train", "test") for r in pq.read_table(tmp_path / "out" / f"{split}.parquet").to_pylist()]
    corpus = " ".join((LORA + " " + QLORA).split())
    assert rows and all(r["origin"] == "backtranslated" for r in rows)
    assert all(" ".join(r["answer"].split()) in corpus for r in rows)  # the source's own text
    assert all(r["support_score"] == 1.0 for r in rows)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["generate"]["output"] == engine.count("evolve") == len(engine.asked)


def test_an_empty_dataset_names_its_cause():
    report = pipeline.StageReport
    unreadable = [report("ingest", 3, 0, {"not_utf8": 3}), report("clean", 0, 0)]
    assert pipeline.emptied_by(unreadable) == "none of the 3 input files held a readable document (not_utf8 3)"
    assert pipeline.funnel_line(unreadable) == "ingest 3 → 0 (not_utf8 3)"
    assert "holds no file" in pipeline.emptied_by([report("ingest", 0, 0)])
    curated = [report("ingest", 2, 2), report("quality", 9, 0, {"gibberish": 2, "truncated": 7})]
    assert pipeline.emptied_by(curated) == "quality dropped all 9 of its items (truncated 7, gibberish 2)"
