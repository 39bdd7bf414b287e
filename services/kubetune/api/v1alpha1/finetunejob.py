"""The FineTuneJob spec: a base model and a dataset in, a published adapter out.

Option names follow TRL's ``SFTConfig`` and PEFT's ``LoraConfig`` (camelCased on the wire), so
``training.learningRate`` is ``SFTConfig.learning_rate`` and ``lora.loraAlpha`` is ``LoraConfig.lora_alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from kubetune.api.v1alpha1.base import CelRule, SpecModel
from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune.api.v1alpha1.datasetbuild import DEFAULT_RUBRIC, EndpointSpec, OciTargetSpec
from kubetune.api.v1alpha1.scheduling import DNS_LABEL, DNS_SUBDOMAIN, SchedulingSpec


class DatasetBuildRef(SpecModel):
    """A DatasetBuild in the same namespace; the job waits until it has succeeded."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="The DatasetBuild's metadata.name.")


class FineTuneJobRef(SpecModel):
    """A FineTuneJob in the same namespace; the job waits until it has succeeded."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="The FineTuneJob's metadata.name.")


class StartFrom(SpecModel):
    """Start from another FineTuneJob's result instead of the bare base model (SFT, then DPO)."""

    fine_tune_job_ref: FineTuneJobRef = Field(
        description="Its adapter is merged into baseModel (in 16-bit, also for qlora) before this job trains; "
        "a full fine-tune's model replaces baseModel. Both jobs must name the same baseModel."
    )


@dataclass(frozen=True)
class Dependencies:
    """What a FineTuneJob waits for, by name, in its own namespace; None where it names nothing of that kind.
    Said once here for the operator's reconcile and index, the planner and the local runner."""

    dataset_build: str | None = None  # spec.dataset.datasetBuildRef.name
    fine_tune_job: str | None = None  # spec.startFrom.fineTuneJobRef.name

    FIELDS: ClassVar[dict[str, str]] = {
        DATASET_BUILD: "spec.dataset.datasetBuildRef.name",
        FINE_TUNE_JOB: "spec.startFrom.fineTuneJobRef.name",
    }

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Dependencies:
        """From a spec as it is on the wire (a kopf body's, which the operator's watch handlers do not parse)."""
        dataset = ((spec.get("dataset") or {}).get("datasetBuildRef") or {}).get("name")
        previous = ((spec.get("startFrom") or {}).get("fineTuneJobRef") or {}).get("name")
        return cls(dataset, previous)

    def items(self) -> list[tuple[str, str]]:
        """(kind, name) of each resource waited for."""
        named = ((DATASET_BUILD, self.dataset_build), (FINE_TUNE_JOB, self.fine_tune_job))
        return [(kind, name) for kind, name in named if name is not None]


class DatasetSource(SpecModel):
    """The training data: a DatasetBuild's output, or a folder holding train.parquet (and test.parquet)."""

    dataset_build_ref: DatasetBuildRef | None = None
    path: str | None = Field(
        None, description="A folder holding train.parquet (and test.parquet), as a DatasetBuild writes it."
    )

    cel_rules: ClassVar = (
        CelRule(
            "has(self.datasetBuildRef) != has(self.path)",
            "set exactly one of datasetBuildRef or path",
            lambda s: (s.dataset_build_ref is None) != (s.path is None),
        ),
    )


class LoraSpec(SpecModel):
    """PEFT LoraConfig options (used by the lora and qlora methods)."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the update matrices.")
    lora_alpha: int = Field(32, ge=1, description="Scaling: the update is multiplied by loraAlpha / r.")
    lora_dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input (PEFT lora_dropout); 0.05, PEFT's examples'."
    )
    use_dora: bool = Field(
        False, description="DoRA: the update split into a magnitude and a direction (PEFT use_dora)."
    )
    use_rslora: bool = Field(
        False, description="rsLoRA: scale the update by loraAlpha / sqrt(r) instead of loraAlpha / r (PEFT use_rslora)."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt; ['all-linear'] adapts every linear layer but the output head.",
    )
    upcast_unquantized: bool = Field(
        False,
        description="qlora: keep the modules left unquantized (embeddings, LM head, norms) in fp32, as PEFT's "
        "prepare_model_for_kbit_training does. Default false: they stay in the compute dtype (bf16 on a GPU), as "
        "torchtune keeps them: they are frozen, so fp32 buys no precision in any update, and it costs 2 bytes per "
        "parameter of them (1.96 GiB on Llama-3.1-8B) and fp32 activations along the residual stream.",
    )


class TrainingSpec(SpecModel):
    """TRL SFTConfig (or DPOConfig) options; packing and completionOnlyLoss apply to sft only."""

    learning_rate: float = Field(
        2e-4,
        gt=0.0,
        le=1.0,
        description="Peak learning rate (SFTConfig.learning_rate). 2e-4 suits LoRA and QLoRA; full fine-tuning "
        "wants about 1e-5 to 2e-5.",
    )
    num_train_epochs: float = Field(
        1.0, gt=0.0, description="Passes over the train split (SFTConfig.num_train_epochs); a fraction stops early."
    )
    max_steps: int = Field(-1, ge=-1, description="Overrides numTrainEpochs when positive.")
    per_device_train_batch_size: int = Field(
        4, ge=1, description="Rows per forward pass on each device; memory grows with it (kubetune plan shows how)."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Forward passes per optimizer step: the effective batch is this times perDeviceTrainBatchSize "
        "times the devices.",
    )
    max_length: int = Field(1024, ge=16, description="Sequences are truncated to this many tokens.")
    packing: bool = Field(
        False,
        description="Pack several rows into each maxLength sequence (SFTConfig.packing; sft only): fewer padding "
        "tokens, faster on short rows.",
    )
    completion_only_loss: bool = Field(True, description="Loss on the answers only, not on the prompts.")
    warmup_steps: float = Field(0, ge=0, description="Warm-up steps; a value below 1 is a share of all steps.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="How the learning rate falls after warm-up (transformers' lr_scheduler_type)."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay; 0, TRL's default.")
    logging_steps: int = Field(
        1, ge=1, description="Loss recorded (metrics.json, loss.png, status progress) every this many steps."
    )
    save_steps: int = Field(50, ge=1, description="A checkpoint every this many steps; a restarted pod resumes.")
    fp32_master_weights: bool = Field(
        False,
        description="method full on a GPU: weights, gradients and AdamW states in fp32 under bf16 autocast (mixed "
        "precision with an fp32 master copy: no update is lost to bf16 rounding), 16 bytes per parameter and bf16 "
        "copies for the matmuls. Default false: pure bf16, 8 bytes per parameter, what fits an 8B full fine-tune on "
        "one 80 GB GPU.",
    )
    activation_offloading: bool = Field(
        False,
        description="Move the activations kept for the backward pass to CPU memory during the forward pass and back "
        "for the backward (TRL's activation_offloading, on CUDA streams): with gradientCheckpointing, a GPU holds the "
        "checkpoints of about two layers instead of all. GPU only.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them: less memory, about a third "
        "more time per step.",
    )
    optim: Literal[
        "auto",
        "adamw_torch_fused",
        "adamw_torch",
        "adamw_8bit",
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
        "lion_8bit",
        "lion_32bit",
        "paged_lion_8bit",
        "paged_lion_32bit",
        "adafactor",
        "sgd",
    ] = Field(
        "auto",
        description="The optimizer, as transformers names it; the 8-bit and paged ones are bitsandbytes' "
        "(paged: the states move to the CPU under memory pressure, on a GPU). auto: paged_adamw_8bit for qlora on a "
        "GPU (the QLoRA paper's choice: no out-of-memory spike at the optimizer step), adamw_torch_fused otherwise.",
    )
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision. Default: on a GPU that supports bf16; on a CPU, what it does fastest: bf16 "
        "with AMX, fp32 without (true there needs AVX512-BF16 or AMX).",
    )
    seed: int = Field(42, description="Seed of the adapter's initialisation, the data order and dropout.")


STRATEGIES = ("auto", "ddp", "fsdp")


class DistributedSpec(SpecModel):
    """How many processes train together and how they split the work: PyTorch distributed, launched by torchrun
    (one process per GPU; over gloo on CPU cores), driven by the transformers Trainer as TRL runs it."""

    num_nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Pods that train together, each running torchrun with processesPerNode ranks (Kubeflow "
        "Trainer's numNodes). kubetune run starts all numNodes x processesPerNode ranks on this machine.",
    )
    processes_per_node: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Ranks per pod. Default: resources.gpus (one rank per GPU), or 1 without a GPU. Without a GPU "
        "more than 1 trains on the CPU's cores over gloo (for tests; a GPU is far faster).",
    )
    strategy: Literal[STRATEGIES] = Field(  # type: ignore[valid-type]
        "auto",
        description="ddp: every rank holds the whole model and averages gradients (adapters, and models whose step "
        "fits one GPU). fsdp: parameters, gradients and optimizer states sharded across the ranks (FSDP full "
        "shard; full fine-tuning of bases too large for one GPU; not qlora, whose 4-bit weights this trainer does "
        "not shard). auto: ddp, unless the method is full and the memory planner finds that a step does not fit "
        "one resources.gpuType.",
    )


class DpoSpec(SpecModel):
    """TRL DPOConfig options (objective dpo). The reference model is the frozen base: for lora and qlora the
    policy with its adapter switched off, for full a frozen copy of the base model."""

    beta: float = Field(0.1, gt=0.0, description="How far the policy may move from the reference model.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "apo_zero", "apo_down"] = Field(
        "sigmoid", description="sigmoid is the DPO paper's loss; ipo, hinge and the others as TRL defines them."
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=0.5, description="Conservative DPO / robust: assumed label noise.")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(
        "keep_start", description="Which end of a pair longer than training.maxLength is kept."
    )
    precompute_ref_log_probs: bool = Field(
        False, description="Compute the reference model's log probabilities once before training."
    )


class EvaluationJudgeSpec(SpecModel):
    """The LLM judge a DatasetBuild curates with, scoring the base and the tuned model's answers on one rubric.
    It is asked over an OpenAI-compatible endpoint (``vllm serve`` in the cluster, or any other), so the
    training image needs no inference engine."""

    endpoint: EndpointSpec = Field(description="The server the judge is asked on (url, model, API key).")
    rubric: str = Field(
        DEFAULT_RUBRIC,
        min_length=1,
        description="What 1, 3 and 5 mean, and any guidance of your own; sent verbatim before the criteria "
        "(helpfulness and style: an answer of a model has no source to be faithful to).",
    )
    max_tokens: int = Field(256, ge=16, description="Token budget of one verdict; a cut verdict is asked again.")
    malformed_retries: int = Field(2, ge=0, le=10, description="A verdict that is not JSON is asked again.")


class EvaluationSpec(SpecModel):
    """What is measured besides the eval loss: answers to test prompts from the base and the tuned model."""

    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every this many steps as well as at the end. Default: once per epoch."
    )
    generations: int = Field(
        4,
        ge=0,
        le=1000,
        description="Test prompts answered (greedy) by the base and the tuned model, written to "
        "OUTPUT/generations.jsonl; 0: none.",
    )
    max_new_tokens: int = Field(128, ge=1, le=8192, description="Token budget per generated answer.")
    embedding_model: str | None = Field(
        None,
        description="A sentence-transformers model folder (e.g. models/all-MiniLM-L6-v2): both models' answers are "
        "scored by their cosine with the reference answers, beside ROUGE-L (metrics.json output_quality). None: "
        "ROUGE-L alone.",
    )
    judge: EvaluationJudgeSpec | None = Field(
        None, description="Score both models' answers with an LLM judge (needs generations above 0)."
    )


class MlflowTargetSpec(SpecModel):
    """An MLflow model registry the adapter is registered in: a run holding the adapter and its lineage, and a
    version of the registered model pointing at it."""

    model_name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=128,
        description="Registered model name; each published adapter becomes a version of it.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI (the operator sets its mlflowUri in the "
        "pod; kubetune run, the local sqlite store in the workdir).",
    )
    credentials_secret: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="In a cluster: a Secret in the job's namespace whose keys become the training pod's environment "
        "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN: MLflow's own names); the "
        "operator never reads it. Default: none (an open server, or credentials from the operator's pod defaults).",
    )


RegistrySpec = MlflowTargetSpec  # the deprecated spec.registry, the same fields as publish.mlflow


class GateSpec(SpecModel):
    """What a tuned model must show on the test split before it is published; every condition set must hold.
    A job whose model fails the gate still succeeds (the adapter is on the volume), with condition Published
    False, reason GateFailed, and nothing published."""

    max_eval_loss: float | None = Field(
        None, gt=0.0, description="The tuned model's eval loss must be below this (e.g. 1.8)."
    )
    min_judge_score: float | None = Field(
        None, ge=1.0, le=5.0, description="The judge's mean 1-5 score of the tuned model's answers must be at least "
        "this (needs evaluation.judge).",
    )  # fmt: skip
    must_beat_base: bool = Field(
        False,
        description="The tuned model's eval loss must be below the base model's on the same test split and, with "
        "evaluation.judge, its judge score above the base's.",
    )


class PublishSpec(SpecModel):
    """Where the adapter is published (each target a publisher: MLflow, OCI), and the gate it must pass first."""

    gate: GateSpec | None = Field(None, description="Conditions on the evaluation; none: always published.")
    mlflow: MlflowTargetSpec | None = Field(None, description="The MLflow model registry the adapter is registered in.")
    oci: list[OciTargetSpec] = Field(
        default_factory=list, max_length=8, description="OCI registries the adapter is pushed to."
    )


class FineTuneJobSpec(SchedulingSpec):
    """Fine-tuning of a base model on a dataset (SFT or DPO), then publishing the adapter."""

    base_model: str = Field(description="Path of a Hugging Face model folder.")
    start_from: StartFrom | None = Field(None, description="Train on top of another FineTuneJob's result.")
    dataset: DatasetSource
    method: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full: all weights; lora: PEFT LoRA; qlora: LoRA over a 4-bit NF4 base."
    )
    objective: Literal["sft", "dpo"] = Field(
        "sft",
        description="sft: supervised fine-tuning on prompt/completion rows; dpo: direct preference optimization "
        "on prompt/chosen/rejected rows (a DatasetBuild of type preference).",
    )
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file: the conversations (a DatasetBuild's messages column, DPO's rows) are "
        "rendered with it, and it is saved with the adapter. Default: the base model tokenizer's own template.",
    )
    merge: bool = Field(
        False,
        description="Also write the base model with the adapter merged in, in 16-bit (for qlora: into the 16-bit "
        "base, never the 4-bit one), to OUTPUT/merged.",
    )
    evaluation: EvaluationSpec = Field(default_factory=lambda: EvaluationSpec())
    registry: RegistrySpec | None = Field(
        None,
        description="Deprecated: use publish.mlflow (the same fields). Still honoured in v1alpha1, with a warning "
        "from kubetune validate; not in a later version.",
    )
    publish: PublishSpec = Field(default_factory=PublishSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @property
    def mlflow(self) -> MlflowTargetSpec | None:
        """The MLflow target: publish.mlflow, or the deprecated registry."""
        return self.publish.mlflow or self.registry

    def optimizer(self, on_gpu: bool) -> str:
        """training.optim, with auto resolved for where it trains."""
        if self.training.optim != "auto":
            return self.training.optim
        return "paged_adamw_8bit" if self.method == "qlora" and on_gpu else "adamw_torch_fused"

    def processes_per_node(self) -> int:
        """distributed.processesPerNode, or its default: one per GPU of the pod (1 without, or while gpus is auto)."""
        if self.distributed.processes_per_node is not None:
            return self.distributed.processes_per_node
        return max(self.resources.gpu_count() or 1, 1)

    def world_size(self) -> int:
        """All the ranks that train together."""
        return self.distributed.num_nodes * self.processes_per_node()

    def deprecations(self) -> list[str]:
        if self.registry is None:
            return []
        return ["spec.registry is deprecated: move it to spec.publish.mlflow (the same fields); a later API version "
                "drops it"]  # fmt: skip

    def dependencies(self) -> Dependencies:
        """The DatasetBuild and the FineTuneJob this job waits for."""
        return Dependencies.of(self.to_wire())

    cel_rules: ClassVar = (
        *SchedulingSpec.cel_rules,
        CelRule(
            "!has(self.registry) || !has(self.publish.mlflow)",
            "set publish.mlflow or the deprecated registry, not both",
            lambda s: s.registry is None or s.publish.mlflow is None,
        ),
        CelRule(
            "!has(self.publish.gate) || !has(self.publish.gate.minJudgeScore) || has(self.evaluation.judge)",
            "publish.gate.minJudgeScore needs evaluation.judge (the judge gives the score)",
            lambda s: (
                s.publish.gate is None or s.publish.gate.min_judge_score is None or s.evaluation.judge is not None
            ),
        ),
        CelRule(
            "!has(self.training) || !has(self.training.fp32MasterWeights) || !self.training.fp32MasterWeights || "
            "self.method == 'full'",
            "training.fp32MasterWeights is for method full: lora and qlora update only their adapters",
            lambda s: not s.training.fp32_master_weights or s.method == "full",
        ),
        CelRule(
            "type(self.resources.gpus) != string || has(self.resources.gpuType)",
            "resources.gpus auto needs resources.gpuType: the GPU the memory planner sizes the job for",
            lambda s: s.resources.gpus != "auto" or s.resources.gpu_type is not None,
        ),
        CelRule(
            "!has(self.distributed) || !has(self.distributed.strategy) || self.distributed.strategy != 'fsdp' || "
            "self.method != 'qlora'",
            "distributed.strategy fsdp does not take method qlora: its 4-bit weights are not sharded; use ddp (each "
            "rank holds the 4-bit base) or method lora",
            lambda s: s.distributed.strategy != "fsdp" or s.method != "qlora",
        ),
        CelRule(
            "!has(self.distributed) || !has(self.distributed.processesPerNode) || "
            "(type(self.resources.gpus) != string && (self.resources.gpus == 0 || "
            "self.distributed.processesPerNode == self.resources.gpus))",
            "distributed.processesPerNode must equal resources.gpus (one rank per GPU), or be unset (with gpus auto "
            "the ranks follow the GPUs the planner sizes)",
            lambda s: (
                s.distributed.processes_per_node is None
                or (s.resources.gpus != "auto" and s.resources.gpus in (0, s.distributed.processes_per_node))
            ),
        ),
    )
