"""The run config: one YAML file validated by pydantic, every field with a working default."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from revela.configbase import SafeName, StrictModel
from revela.data.config import DataConfig
from revela.evaluation.settings import Count, ScoringSettings

Finetune = Literal["lora", "full", "frozen"]


class LoraSettings(StrictModel):
    r: int = Field(256, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class RetrieverConfig(StrictModel):
    name: str = "all-minilm-l6-v2"
    """Offline asset alias, local path or hub id (hub ids need a network)."""
    pooling: Literal["auto", "eos", "cls", "mean"] = "auto"
    """auto: eos for decoders; for encoders the backbone's sentence-transformers pooling config, else mean."""
    query_prefix: str = "auto"
    passage_prefix: str = "auto"
    """auto: the backbone's own prompts when it ships them (sentence-transformers `prompts`), none for encoders
    without, the paper's `query: `/`passage: ` for decoders (their EOS embedding is trained with them). Measured on
    all-MiniLM-L6-v2, which ships none: `query: `/`passage: ` cost 0.031 nDCG@10 on stdlib-code and 0.057 on pyfaq
    (bench/PROTOCOL_NOTES.md). Any other string is used as given ("" for none)."""
    max_length: int = Field(160, ge=8)
    finetune: Finetune = "full"
    lora: LoraSettings = LoraSettings()
    gradient_checkpointing: bool = False
    """Recompute each layer of the backbone in backward instead of keeping its activations (docs/performance.md)."""
    compile: bool = False
    """torch.compile the backbone's forward (its adapters included): fewer, fused kernels; the first steps (and each
    new input shape) compile. Opt-in until measured on a GPU (docs/performance.md)."""


class LMConfig(StrictModel):
    name: str = "smollm2-135m"
    finetune: Finetune = "lora"
    lora: LoraSettings = LoraSettings()
    max_length: int = Field(160, ge=8)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Kernel for each chunk's own causal attention; the in-batch part is added on top of it."""
    gradient_checkpointing: bool | Literal["pass2", "pass3"] = False
    """Recompute each decoder layer in backward instead of keeping its activations: true (both passes), pass2 (the
    chunks alone) or pass3 (with the in-batch term). Memory per pass and its cost: docs/performance.md."""
    loss_chunk_tokens: int | None = Field(None, ge=1)
    """None: the LM's head over all tokens at once. N: the head and the cross-entropy over N token positions at a
    time, recomputed in backward, so the [tokens, vocab] logits are never held (same loss and gradients)."""


Temperature = Annotated[float, Field(gt=0)] | Literal["auto"]


class ObjectiveConfig(StrictModel):
    temperature: Temperature = "auto"
    """tau of Sim = softmax(cos / tau) over j != i (method §1.2). auto: calibrated before the first step on the first
    training groups so that Sim's mean row entropy is `target_entropy` of its maximum (docs/temperature.md); a
    number is used as given (the paper's is 1e-4)."""
    target_entropy: float = Field(0.7, gt=0, lt=1)
    """temperature: auto aims the mean Sim row entropy at this fraction of ln(B-1) (0: one-hot, 1: uniform). 0.7: where
    the GPU runs whose retriever learned sat (tau=0.01 gave 55-90%, the best run 70-77%; bench/TAU_NOTES.md)."""
    sim: Literal["softmax", "uniform"] = "softmax"
    """uniform: a control; every other chunk weighted 1/(B-1), so the LM still sees the group but the retriever gets
    no signal (it is frozen and not run in training)."""
    v_norm: bool | None = None
    """None: on for prose, off for code (method §1.3)."""
    first_half: bool | None = None
    """None: on for prose, off for code (method §1.2)."""
    first_half_ratio: float = Field(0.5, gt=0, le=1)
    inbatch_chunk: int = Field(8, ge=1)
    """Torch path only: chunks j processed at once inside in-batch attention (memory/speed trade-off)."""
    inbatch_backend: Literal["auto", "torch", "triton"] = "auto"
    """auto: the fused Triton kernels on CUDA (when triton is installed), the blockwise torch path elsewhere."""


class ModelConfig(StrictModel):
    retriever: RetrieverConfig = RetrieverConfig()
    lm: LMConfig = LMConfig()
    objective: ObjectiveConfig = ObjectiveConfig()


class TrainConfig(StrictModel):
    seed: int = 42
    max_steps: int = Field(30, ge=1)
    """Optimizer steps."""
    groups_per_forward: int = Field(1, ge=1)
    """G: groups that go through the retriever and the LM together, as one batch of G*B sequences (Sim and
    in-batch attention stay inside each group). Larger G keeps a GPU busy with small models."""
    grad_accum: int = Field(1, ge=1)
    """Forwards (of G groups each) per optimizer step: an optimizer step sees G * grad_accum groups."""
    lr: float = Field(1e-4, gt=0)
    retriever_lr: float | None = Field(None, gt=0)
    """Learning rate of the retriever's parameters; None: `lr`. Fully fine-tuned encoders want far less than
    LoRA adapters (MiniLM at 1e-3 loses most of its retrieval quality in 60 steps, bench/NOTES.md)."""
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU."""
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(0, ge=0)
    """0: only at the end."""
    keep_checkpoints: int = Field(2, ge=1)
    heldout_groups: int = Field(0, ge=0)
    """Groups kept out of training to measure pass-2/pass-3 loss and neighbour hit-rate before and after."""


class RayConfig(StrictModel):
    address: str | None = None
    """None: an embedded local Ray."""
    num_workers: int = 1
    """Ray Train workers (processes), each training on its share of every step's groups; 1 = one process."""
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, le=1)
    """With use_gpu: each worker's share of its GPU; below 1 lets evaluation tasks (eval.num_gpus) share it."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    max_failures: int = Field(2, ge=0)
    storage_path: str = "runs"
    """The run folders' parent. On several nodes: a path every node mounts (NFS, ...); each Train worker and
    evaluation task checks that it sees the driver's marker there and refuses otherwise (docs/cluster.md)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Train workers are placed on nodes (Ray placement group strategy): SPREAD puts them on different nodes
    when it can, STRICT_SPREAD only on different nodes (it waits until there are enough), PACK fills nodes first."""
    resources_per_worker: dict[str, float] = {}
    """Custom resources each Train worker holds besides its CPUs/GPUs, e.g. {trainer: 1} to use only nodes
    started with `ray start --resources '{"trainer": 2}'` (at most two workers each)."""
    label_selector: dict[str, str] = {}
    """Node labels a Train worker's node must carry (`ray start --labels`), e.g. {pool: train}."""

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        builtin = sorted(k for k in value if k in ("CPU", "GPU", "memory"))
        if builtin:
            raise ValueError(f"{', '.join(builtin)}: set CPUs and GPUs with cpus_per_worker / gpus_per_worker; "
                             "resources_per_worker is for custom resources")
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"{', '.join(negative)}: resource amounts must be >= 0")
        return value

    @field_validator("num_workers")
    @classmethod
    def _at_least_one_worker(cls, value: int) -> int:
        if value < 1:
            # 0 is Ray Train's local mode (the function runs in the driver): Ray then keeps the reported checkpoint
            # only as the temporary folder it was written to, scores nothing, keeps no best K and resumes nothing
            raise ValueError("must be at least 1: 0 would run Ray Train's local mode, which keeps no "
                             "checkpoint and scores none; use 1 for a single training process")
        return value


class EvalConfig(ScoringSettings):
    """Dev sets scored on every checkpoint while training goes on (`datasets`: BEIR-layout directories or offline
    suite names; empty: no in-training evaluation, checkpoints are kept by recency), with the query sample, batch
    size and lengths `revela evaluate` also takes (revela.evaluation.settings.ScoringSettings)."""

    max_queries: Count | None = 200
    """Queries sampled per dev set (the corpus stays whole)."""
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    select_best_by: str = "dev_ndcg_at_10"
    """The checkpoint metric (higher is better) that decides which checkpoints are kept."""


# Embedded defaults are a CPU-sized run (minutes on 2 cores); jobs/configs/paper.yaml is the paper's recipe.
# tau is calibrated (temperature: auto): a fixed tau suits one backbone's spread of cosines only; the paper's 1e-4
# makes MiniLM's Sim one-hot (mean entropy 0-1% of ln(B-1) on real code and prose, bench/TAU_NOTES.md), so the
# retriever would learn nothing.
CPU_MODEL = ModelConfig(retriever=RetrieverConfig(max_length=64),
                        lm=LMConfig(max_length=64, lora=LoraSettings(r=16, alpha=32, dropout=0.05)),
                        objective=ObjectiveConfig(temperature="auto"))
CPU_DATA = DataConfig(group_size=8, max_words=48, max_tokens=64, docs_per_window=4)
CPU_TRAIN = TrainConfig(max_steps=20, lr=1e-3, retriever_lr=2e-5, warmup_steps=4, checkpoint_every=10,
                        heldout_groups=4)


class RunConfig(StrictModel):
    name: SafeName = "revela-default"
    """One path component: the run folder is ray.storage_path/name."""
    model: ModelConfig = CPU_MODEL
    data: DataConfig = CPU_DATA
    train: TrainConfig = CPU_TRAIN
    ray: RayConfig = RayConfig(cpus_per_worker=2)
    eval: EvalConfig = EvalConfig()
