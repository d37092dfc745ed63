"""Structured-config schemas (dataclasses registered in Hydra's ConfigStore) and config finalisation.

Every config group has a schema, so a typo fails at composition with the valid keys or choices.
Enums (not ``Literal``) give closed value sets that OmegaConf 2.3 validates.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from edit_runner.errors import ConfigError


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
    knowedit = "knowedit"
    mquake = "mquake"


class ProtocolName(str, Enum):
    """Editing protocols: all edits in one update, steps of ``batch_size`` edits applied one after
    another, or steps each applied to the unedited model (restored after the step's evaluation)."""

    batched = "batched"
    sequential = "sequential"
    independent = "independent"


class MetricDefinition(str, Enum):
    """Named metric definitions (SPEC Part B §8)."""

    memit = "memit"
    easyedit = "easyedit"


class CorpusSource(str, Enum):
    """Covariance corpus: auto, a Hugging Face dataset, a local text file, model samples (offline),
    the MEMIT/ROME Wikipedia sample, or published per-layer ``.npz`` statistics (SPEC Part C §10)."""

    auto = "auto"
    hf = "hf"
    text = "text"
    model_samples = "model_samples"
    wikipedia = "wikipedia"
    npz = "npz"


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
    device_map: str | None = None
    max_length: int | None = None


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
    unique_subjects: bool = False  # keep the first record of each subject (seeds 002/004 sampling rule)


@dataclass
class ProtocolConfig:
    """Batched (one update), sequential (steps of ``batch_size`` edits, no restore between steps) or
    independent (steps of ``batch_size`` edits, each on the unedited model: weights and editor state
    are restored after the step's evaluation)."""

    name: ProtocolName = MISSING
    batch_size: int | None = None
    eval_each_step: bool = True
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    checkpoint_max_overhead: float = 0.05


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
    selection: str = "balanced"  # or "first": the first num_items test items (the reference's number_of_tests)


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
    wikipedia_dataset: str = "wikipedia"
    wikipedia_dump: str = "20200501.en"
    import_dir: str | None = None


@dataclass
class RunConfig:
    """The root config of one ``edit-run`` job."""

    model: ModelConfig = MISSING
    algo: Any = MISSING
    data: DataConfig = MISSING
    wrapper: dict[str, Any] = field(default_factory=dict)
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
    num_threads: int | None = None


def register_configs() -> None:
    """Register the root schema and every algorithm's and wrapper's config dataclass in Hydra's ConfigStore.

    ``conf/algo/<name>.yaml`` takes its schema from ``/schema/algo/<name>`` and
    ``conf/wrapper/<name>.yaml`` from ``/schema/wrapper/<name>`` (idempotent).
    """
    from edit_runner.editing.algorithms import algorithm_registry
    from edit_runner.editing.wrappers import wrapper_registry

    store = ConfigStore.instance()
    store.store(name="edit_runner_schema", node=RunConfig)
    algorithms = algorithm_registry()
    for name in algorithms.names():
        store.store(group="schema/algo", name=name, node=algorithms.get(name).config_type)
    wrappers = wrapper_registry()
    for name in wrappers.names():
        store.store(group="schema/wrapper", name=name, node=wrappers.get(name).config_type)


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


def enabled_wrappers(cfg: Any) -> list[str]:
    """Names of the wrappers whose config is set, in canonical order."""
    from edit_runner.editing.wrappers import selected_wrappers

    return list(selected_wrappers(cfg.wrapper))


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


def effective_config(cfg: DictConfig, overrides: list[str] | None = None) -> RunConfig:
    """The job's typed config: the per-model paper values merged under ``overrides``, as dataclasses.

    This is the one place a composed ``DictConfig`` becomes the :class:`RunConfig` the runner,
    plan, editor and trackers receive.
    """
    merged = copy.deepcopy(cfg)
    finalize_config(merged, overrides)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def finalize_config(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Type every wrapper node set without its yaml (a preset's ``wrapper.<name>.*``) and merge the per-model values."""
    from edit_runner.editing.wrappers import RESERVED_KEYS, wrapper_registry

    registry = wrapper_registry()
    for name in list(cfg.wrapper.keys()):
        node = cfg.wrapper[name]
        if name in RESERVED_KEYS or node is None or OmegaConf.get_type(node) is not dict:
            continue
        try:
            typed = OmegaConf.merge(OmegaConf.structured(registry.get(name).config_type), node)
        except Exception as err:  # noqa: BLE001 - OmegaConf's validation errors name the key
            raise fail(f"wrapper.{name}", str(err).splitlines()[0]) from None
        cfg.wrapper[name] = typed
    apply_paper_hyperparameters(cfg, overrides)


def config_node(cfg: Any) -> DictConfig:
    """``cfg`` (a dataclass such as :class:`RunConfig`, or a DictConfig) as a DictConfig."""
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)


def config_yaml(cfg: Any) -> str:
    """``cfg`` as YAML (enums as their values)."""
    return OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(config_node(cfg), resolve=True, enum_to_str=True)))


def check_override_keys(overrides: list[str], conf_dir: Path) -> None:
    """Refuse ``algo.<key>`` / ``wrapper.<name>.<key>`` overrides the chosen algorithm or wrapper lacks.

    Hydra refuses them too, but without the valid keys; this names them. The algorithm is the
    ``algo=`` choice (every value of a sweep), else the experiment preset's, else the default.
    """
    from edit_runner.editing.algorithms import algorithm_registry
    from edit_runner.editing.wrappers import RESERVED_KEYS, wrapper_registry

    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "-"))]
    choices = dict(o.split("=", 1) for o in plain if "." not in o.split("=", 1)[0])
    algos = choices["algo"].split(",") if "algo" in choices else [_preset_algo(choices.get("experiment"), conf_dir)]
    if "wrapper" in choices:
        available = sorted(path.stem for path in (conf_dir / "wrapper").glob("*.yaml"))
        for name in choices["wrapper"].strip("[]").split(","):
            if name.strip() and name.strip() not in available:
                close = difflib.get_close_matches(name.strip(), available, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise fail("wrapper", f"no wrapper {name.strip()!r}.{hint} Available: {', '.join(available)}")
    registry = algorithm_registry()
    for override in plain:
        key = override.split("=", 1)[0]
        parts = key.split(".")
        if parts[0] == "algo" and len(parts) > 1:
            for name in algos:
                _check_field(key, parts[1], registry.get(name).config_type, f"algo={name}")
        elif parts[0] == "wrapper" and len(parts) > 2 and parts[1] not in RESERVED_KEYS:
            _check_field(key, parts[2], wrapper_registry().get(parts[1]).config_type, f"wrapper={parts[1]}")


def _preset_algo(experiment: str | None, conf_dir: Path) -> str:
    root = OmegaConf.load(conf_dir / "config.yaml")
    source = OmegaConf.load(conf_dir / "experiment" / f"{experiment}.yaml") if experiment else root
    for entry in source.get("defaults", []):
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                if str(key).removeprefix("override").strip().strip("/") == "algo":
                    return str(value)
    return _preset_algo(None, conf_dir) if experiment else "rome"


def _check_field(key: str, field_name: str, config_type: type, owner: str) -> None:
    names = [f.name for f in dataclasses.fields(config_type)]
    if field_name not in names:
        close = difflib.get_close_matches(field_name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise fail(key, f"{owner} has no setting {field_name!r}.{hint} Valid keys: {', '.join(names)}")


def config_hash(cfg: Any) -> str:
    """A stable hash of the job config (excluding output/progress/resume settings)."""
    container = OmegaConf.to_container(config_node(cfg), resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    for key in ("output_root", "progress", "resume", "hydra"):
        container.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fail(key: str, message: str) -> ConfigError:
    """A ConfigError naming the config key and the fix."""
    return ConfigError(f"{key}: {message}")
