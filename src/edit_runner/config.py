"""Structured-config schemas (dataclasses registered in Hydra's ConfigStore) and config finalisation.

Every config group has a schema, so a typo fails at composition with the valid keys or choices.
Enums (not ``Literal``) give closed value sets that OmegaConf 2.3 validates.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from edit_runner.errors import ConfigError


class AlgoName(str, Enum):
    """Editing algorithms (SPEC Part A)."""

    rome = "rome"
    memit = "memit"
    pmet = "pmet"
    emmet = "emmet"
    alphaedit = "alphaedit"
    ft = "ft"
    ft_c = "ft_c"


class ModelSource(str, Enum):
    """Where model weights come from."""

    auto = "auto"
    smollm2 = "smollm2"
    gguf = "gguf"


class DataFormat(str, Enum):
    """Edit-dataset formats."""

    demo = "demo"
    counterfact = "counterfact"
    multi_counterfact = "multi_counterfact"
    zsre = "zsre"
    easyedit = "easyedit"
    custom = "custom"


class ProtocolName(str, Enum):
    """Editing protocols: all edits in one update, or steps of ``batch_size`` edits."""

    batched = "batched"
    sequential = "sequential"


class MetricDefinition(str, Enum):
    """Named metric definitions (SPEC Part B §8)."""

    memit = "memit"
    easyedit = "easyedit"


class CorpusSource(str, Enum):
    """Covariance corpus: auto, a Hugging Face dataset, a local text file, or model samples (offline)."""

    auto = "auto"
    hf = "hf"
    text = "text"
    model_samples = "model_samples"


class StopRule(str, Enum):
    """Iterative-editing stop rules (SPEC Part B §9)."""

    abs_delta = "abs_delta"
    monotonic = "monotonic"
    small_change = "small_change"
    none = "none"


class NeighborWeighting(str, Enum):
    """NA loss weighting: the paper's separate mean, or the reference code's pooled mean (SPEC B §10)."""

    paper = "paper"
    pooled = "pooled"


class D4SResidual(str, Enum):
    """D4S residual modes (SPEC Part B §11)."""

    reference = "reference"
    remeasured = "remeasured"


@dataclass
class ModelConfig:
    """Architecture-independent model facts: where to load it from and how to run it."""

    name: str = MISSING
    path: str | None = None
    source: ModelSource = ModelSource.auto
    gguf_file: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    max_length: int | None = None


@dataclass
class AlgoConfig:
    """Method hyper-parameters (SPEC Part C §1.7, §2–§7); ``per_model`` holds values a paper fixes per model."""

    name: AlgoName = MISSING
    layers: list[int] = field(default_factory=lambda: [5])
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    nll_loss_factor: float = 1.0
    mom2_adjustment: bool = True
    mom2_update_weight: float = 15000.0
    mom2_n_samples: int = 100000
    mom2_dtype: str = "float32"
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    consistent_keys: bool = False
    emmet_lambda: float = 0.1
    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    alphaedit_float64: bool = False
    ft_lr: float = 5e-4
    ft_num_steps: int = 25
    ft_norm_constraint: float | None = None
    ft_weight_decay: float = 0.0
    ft_batch_size: int = 64
    target_chunk: int = 16
    per_model: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which edit dataset and which of its records."""

    name: str = MISSING
    format: DataFormat = DataFormat.demo
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    num_edits: int | None = 10
    offset: int = 0
    seed: int = 0
    shuffle: bool = False
    case_ids_file: str | None = None


@dataclass
class IterativeConfig:
    """Iterative editing (seed 000 §3.1): repeat optimize→spread until a stop rule holds."""

    max_iterations: int = 10
    stop_rule: StopRule = StopRule.abs_delta
    epsilon: float = 1.0
    full_metrics: bool = False


@dataclass
class NeighborConfig:
    """Neighbor-assisted editing (seed 000 §3.2): NA (no prefix) or NAP (random prefixes)."""

    neighbor_weight: float = 1.0
    weighting: NeighborWeighting = NeighborWeighting.paper
    num_train_neighbors: int = 1
    min_qualifying: int = 2


@dataclass
class MPESConfig:
    """Most-probable early stopping (seed 004, SPEC C §7.1): ``prob_cutoff=-c`` stops at the c-th all-argmax pass."""

    prob_cutoff: float = -1.0


@dataclass
class NormConstraintConfig:
    """Frobenius-norm constraint (seed 004): + λ_n I in the spread's normal equations."""

    norm_lambda: float = 10.0


@dataclass
class PrevEditKeysConfig:
    """ENCORE's previous-edit key memory: Σ_p K_p K_pᵀ in the preservation term (SPEC C §7.2)."""

    enabled: bool = True


@dataclass
class D4SConfig:
    """D4S (seed 003): running sums Σ R Kᵀ and Σ K Kᵀ over all past sequential edits."""

    residual: D4SResidual = D4SResidual.reference


@dataclass
class WrapperConfig:
    """The enabled wrappers: a field is set when its config was selected (``wrapper=[iterative,na]``)."""

    iterative: IterativeConfig | None = None
    na: NeighborConfig | None = None
    nap: NeighborConfig | None = None
    mpes: MPESConfig | None = None
    norm_constraint: NormConstraintConfig | None = None
    prev_edit_keys: PrevEditKeysConfig | None = None
    d4s: D4SConfig | None = None
    preset: str | None = None
    per_model: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProtocolConfig:
    """Batched (one update) or sequential (steps of ``batch_size`` edits, no restore between steps)."""

    name: ProtocolName = MISSING
    batch_size: int | None = None
    eval_each_step: bool = True


@dataclass
class MePplConfig:
    """Collapse check: ME-PPL perplexity (file path or canonical URL; project text set as fallback)."""

    path: str | None = None
    url: str | None = None
    max_length: int = 100
    alarm_factor: float = 2.0


@dataclass
class DownstreamConfig:
    """Few-shot downstream tasks (SPEC Part D)."""

    tasks: list[str] = field(default_factory=list)
    data_dir: str | None = None
    num_items: int = 200
    num_shots: int = 0
    mode: str = "probability"


@dataclass
class LmEvalConfig:
    """Optional lm-evaluation-harness tasks on the in-memory edited model."""

    tasks: list[str] = field(default_factory=list)
    limit: int | None = 100


@dataclass
class EvalConfig:
    """Evaluation: metric definition, pre-edit values, and the long-run tracker schedule."""

    metrics: MetricDefinition = MetricDefinition.memit
    batch_size: int = 32
    pre: bool = True
    perplexity: bool = True
    me_ppl: MePplConfig = field(default_factory=MePplConfig)
    every_n_edits: int | None = None
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    forgetting: bool = True
    forgetting_sample: int | None = None
    norms: bool = True
    fluency: bool = False


@dataclass
class StatsConfig:
    """Covariance-statistics corpus and cache (SPEC Part C §10)."""

    corpus: CorpusSource = CorpusSource.auto
    hf_dataset: str = "wikitext"
    hf_config: str | None = "wikitext-103-raw-v1"
    hf_split: str = "train"
    text_path: str | None = None
    max_length: int | None = None
    fallback_texts: int = 128
    fallback_length: int = 64
    batch_size: int = 16


@dataclass
class RunConfig:
    """The root config of one ``edit-run`` job."""

    model: ModelConfig = MISSING
    algo: AlgoConfig = MISSING
    data: DataConfig = MISSING
    wrapper: WrapperConfig = field(default_factory=WrapperConfig)
    protocol: ProtocolConfig = MISSING
    eval: EvalConfig = MISSING
    stats: StatsConfig = field(default_factory=StatsConfig)
    seed: int = 0
    trial: int = 0
    experiment: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    context_templates_file: str | None = None
    cache_dir: str | None = None
    output_root: str = "outputs"
    resume: bool = True
    progress: bool = True


def register_configs() -> None:
    """Register the root schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="edit_runner_schema", node=RunConfig)


def slug(text: str | None, max_len: int = 80) -> str:
    """A filesystem-safe, deterministic directory name for a list of overrides."""
    if not text:
        return "default"
    clean = re.sub(r"[^A-Za-z0-9=,._+-]", "_", text)
    if len(clean) <= max_len:
        return clean
    return clean[: max_len - 11] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]


def register_resolvers() -> None:
    """Register the OmegaConf resolvers the config tree uses (idempotent)."""
    if not OmegaConf.has_resolver("er_slug"):
        OmegaConf.register_new_resolver("er_slug", slug)


WRAPPER_NAMES = ("iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys", "d4s")


def enabled_wrappers(cfg: DictConfig) -> list[str]:
    """Names of the wrappers whose config is set, in canonical order."""
    return [name for name in WRAPPER_NAMES if cfg.wrapper.get(name) is not None]


def overridden_keys(overrides: list[str]) -> set[str]:
    """Dotted keys set explicitly by command-line overrides (``algo.v_lr=0.1`` → ``algo.v_lr``)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def _merge_per_model(node: DictConfig, prefix: str, model_name: str, explicit: set[str]) -> None:
    table = node.get("per_model") or {}
    values = table.get(model_name)
    if not values:
        return
    flat = OmegaConf.to_container(OmegaConf.create(values), resolve=True)

    def walk(value: Any, path: list[str]) -> None:
        dotted = ".".join([prefix, *path])
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                walk(sub_value, [*path, sub_key])
            return
        if dotted in explicit:
            return
        parent = ".".join(path[:-1])
        holder = OmegaConf.select(node, parent) if parent else node
        if holder is None:
            return  # a per-model value for a wrapper that is not enabled
        holder[path[-1]] = value

    walk(flat, [])


def apply_paper_hyperparameters(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Merge ``algo.per_model[model.name]`` and ``wrapper.per_model[model.name]`` into the config.

    Values the papers fix per model sit below explicit command-line overrides: a key given on
    the command line (``algo.v_lr=0.1``) keeps its command-line value.
    """
    explicit = overridden_keys(overrides or [])
    _merge_per_model(cfg.algo, "algo", cfg.model.name, explicit)
    _merge_per_model(cfg.wrapper, "wrapper", cfg.model.name, explicit)


def config_hash(cfg: DictConfig) -> str:
    """A stable hash of the job config (excluding output/progress/resume settings)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    for key in ("output_root", "progress", "resume", "hydra"):
        container.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fail(key: str, message: str) -> ConfigError:
    """A ConfigError naming the config key and the fix."""
    return ConfigError(f"{key}: {message}")
