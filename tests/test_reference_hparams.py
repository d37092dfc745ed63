"""Every preset cell runs the hyper-parameters of the reference configuration its paper used.

:data:`REFERENCE` is one table, one entry per seed × method × model: the values of the file the
seed's authors ran (``source``: repository, path and the commit read), plus the values the paper
itself states over that file (``paper``, per preset or ``"*"``, each with the table it comes from).
Every cell of every preset's launch commands (``conf/experiment/*.yaml`` headers) is composed as
``edit-run`` composes it (:func:`compose_reference_cell`) and must equal its entry key by key, and
every entry must be reached by some cell.

Not compared: the module templates and ``v_loss_layer`` (every file's is the last block, which is what
the layouts use), ``mom2_dataset`` (the stats config, not the algorithm's), ``fact_token``
(``subject_last`` everywhere) and AlphaEdit's ``mom2_update_weight`` (present in its jsons, unused by
its update). Seed 004's ``prob_cutoff`` of the MPES rows and ``update_norm_lambda`` of the norm-
constraint rows come from the paper's Tables 6-10 alone and are checked in ``test_presets.py``.

Files the stored index does not hold, and what stands in for them:
- kmeng01/memit ``hparams/ROME/{gpt2-xl,EleutherAI_gpt-j-6B}.json`` and ``hparams/MEMIT/gpt2-xl.json``
  (seed 002): the copies in scalable-model-editing/unified-model-editing (the seed 002 authors' group)
  and zjunlp/EasyEdit, whose values equal kmeng01/rome's ROME jsons and SPEC C §1.7 / §2;
- FT-C on GPT-J for seed 002: no file of the authors'; kmeng01's ``FT/EleutherAI_gpt-j-6B_constr.json``
  (EasyEdit's copy) with the layer the paper names (App. A.2: "layers 18 and 6", 1-based).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from edit_runner.config import finalize_config
from test_presets import PRESETS, full_product, launch_commands

RUOE = "bhimanbaghel/ResolveUnderOverEdit@32bfe1e2"
EASYEDIT = "zjunlp/EasyEdit"
ENCORE = "scalable-model-editing/encore@1f2264e1"
ENCORE_REG = "scalable-model-editing/knowledge-editing-regularization@df306172"
UNIFIED = "scalable-model-editing/unified-model-editing"


@dataclass(frozen=True)
class Reference:
    """The reference values of one seed × method × model (method: the algorithm, or ``encore``)."""

    seed: str
    method: str
    model: str
    source: str
    values: dict[str, object]
    paper: dict[str, dict[str, object]] = field(default_factory=dict)

    def expected(self, preset: str) -> dict[str, object]:
        """The file's values with the paper's own values for ``preset`` on top."""
        return {**self.values, **self.paper.get("*", {}), **self.paper.get(preset, {})}


def algo(**values: object) -> dict[str, object]:
    """``algo.<key>`` entries (``mom2_dtype`` is float32 in every file that has covariance statistics)."""
    return {f"algo.{key}": value for key, value in values.items()}


def two_stage(**values: object) -> dict[str, object]:
    """``algo(...)`` of a locate-then-edit method (every such file: float32 statistics, kl 0.0625 unless given)."""
    return algo(**{"kl_factor": 0.0625, "mom2_dtype": "float32", **values})


LAYERS_GPT2XL = [13, 14, 15, 16, 17]
LAYERS_GPTJ = [3, 4, 5, 6, 7, 8]
LAYERS_LLAMA = [4, 5, 6, 7, 8]
ROME_TEMPLATES = [[5, 10], [10, 10]]
PREV_EDIT_KEYS = {"wrapper.prev_edit_keys.enabled": True}  # the ENCORE jsons' add_prev_edits: true

REFERENCE: list[Reference] = [
    # ----------------------------------------------------------------- seed 000 (RUOE, iterative / NA)
    # The *_RECURSIVE_NEIGHBOR yamls (Tables 2-3) hold the same values as the *_RECURSIVE ones.
    Reference("000", "rome", "gpt2-xl", f"{RUOE} hparams/ROME_RECURSIVE/gpt2-xl.yaml", two_stage(
        layers=[17], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
        mom2_adjustment=False, mom2_n_samples=100000, context_template_length_params=ROME_TEMPLATES)),
    Reference("000", "rome", "gpt-j", f"{RUOE} hparams/ROME_RECURSIVE/gpt-j-6B.yaml", two_stage(
        layers=[5], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
        mom2_adjustment=False, mom2_n_samples=100000, context_template_length_params=ROME_TEMPLATES)),
    Reference("000", "rome", "llama2-7b", f"{RUOE} hparams/ROME_RECURSIVE/llama-7b.yaml", two_stage(
        layers=[5], v_num_grad_steps=25, v_lr=0.5, v_weight_decay=1e-3, clamp_norm_factor=4.0,
        mom2_adjustment=False, mom2_n_samples=100000, context_template_length_params=ROME_TEMPLATES)),
    Reference("000", "memit", "gpt2-xl", f"{RUOE} hparams/MEMIT_RECURSIVE/gpt2-xl.yaml", two_stage(
        layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=20000.0, mom2_n_samples=100000)),
    Reference("000", "memit", "gpt-j", f"{RUOE} hparams/MEMIT_RECURSIVE/gpt-j-6B.yaml", two_stage(
        layers=LAYERS_GPTJ, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("000", "memit", "llama2-7b", f"{RUOE} hparams/MEMIT_RECURSIVE/llama-7b.yaml", two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=1e-3, clamp_norm_factor=4.0,
        mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("000", "pmet", "gpt2-xl", f"{RUOE} hparams/PMET_RECURSIVE/gpt2-xl.yaml", two_stage(
        layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        nll_loss_factor=1.0, mom2_update_weight=20000.0, mom2_n_samples=100000)),
    Reference("000", "pmet", "gpt-j", f"{RUOE} hparams/PMET_RECURSIVE/gpt-j-6B.yaml", two_stage(
        layers=LAYERS_GPTJ, v_num_grad_steps=30, v_lr=0.2, v_weight_decay=0.5, clamp_norm_factor=0.75,
        kl_factor=1.0, nll_loss_factor=1.0, mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("000", "pmet", "llama2-7b", f"{RUOE} hparams/PMET_RECURSIVE/llama-7b.yaml", two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=1.0,
        nll_loss_factor=1.0, mom2_update_weight=15000.0, mom2_n_samples=100000)),
    # ------------------------------------------------ seed 002 (kmeng01/memit defaults, App. A.2)
    Reference("002", "rome", "gpt2-xl",
              f"{UNIFIED}@914c0654 hparams/ROME/gpt2-xl.json (= kmeng01/rome@0c067520 hparams/ROME/gpt2-xl.json)",
              two_stage(layers=[17], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                        mom2_adjustment=True, mom2_n_samples=100000,
                        context_template_length_params=ROME_TEMPLATES)),
    Reference("002", "rome", "gpt-j",
              f"{UNIFIED}@ac0cb396 hparams/ROME/EleutherAI_gpt-j-6B.json "
              "(= kmeng01/rome@0c067520 hparams/ROME/EleutherAI_gpt-j-6B.json)",
              two_stage(layers=[5], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                        mom2_adjustment=True, mom2_n_samples=100000,
                        context_template_length_params=ROME_TEMPLATES)),
    Reference("002", "memit", "gpt2-xl", f"{EASYEDIT}@a781d666 hparams/MEMIT/gpt2-xl.json (kmeng01's file)",
              two_stage(layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5,
                        clamp_norm_factor=0.75, mom2_update_weight=20000.0, mom2_n_samples=100000)),
    Reference("002", "memit", "gpt-j", "kmeng01/memit@ef6f4cdf hparams/MEMIT/EleutherAI_gpt-j-6B.json",
              two_stage(layers=LAYERS_GPTJ, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5,
                        clamp_norm_factor=0.75, mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("002", "ft_c", "gpt2-xl", f"{UNIFIED}@2f7c65c1 hparams/FT/gpt2-xl_constr.json",
              algo(layers=[17], ft_lr=5e-4, ft_num_steps=25, ft_weight_decay=0.0, ft_norm_constraint=5e-4)),
    Reference("002", "ft_c", "gpt-j", f"{EASYEDIT}@a781d666 hparams/FT/EleutherAI_gpt-j-6B_constr.json (kmeng01's)",
              algo(layers=[0], ft_lr=5e-4, ft_num_steps=25, ft_weight_decay=0.0, ft_norm_constraint=5e-5),
              paper={"*": {"algo.layers": [5]}}),  # App. A.2: FT-C edits ROME's layer (6th, 1-based)
    # --------------------------------------- seed 003 (EasyEdit yamls; D4S runs EasyEdit's MEMIT yamls)
    Reference("003", "ft", "gpt-j", f"{EASYEDIT}@06dca999 hparams/FT/gpt-j-6B.yaml",
              algo(layers=[21], ft_lr=5e-4, ft_num_steps=25, ft_weight_decay=0.0, ft_norm_constraint=None)),
    Reference("003", "ft", "llama2-7b", f"{EASYEDIT}@3fb01b3d hparams/FT/llama-7b.yaml",
              algo(layers=[21], ft_lr=5e-4, ft_num_steps=25, ft_weight_decay=0.0, ft_norm_constraint=None)),
    Reference("003", "rome", "gpt-j", f"{EASYEDIT}@08da19c8 hparams/ROME/gpt-j-6B.yaml", two_stage(
        layers=[5], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
        mom2_adjustment=False, mom2_n_samples=100000, context_template_length_params=ROME_TEMPLATES)),
    Reference("003", "rome", "llama2-7b", f"{EASYEDIT}@08da19c8 hparams/ROME/llama-7b.yaml", two_stage(
        layers=[5], v_num_grad_steps=25, v_lr=0.5, v_weight_decay=1e-3, clamp_norm_factor=4.0,
        mom2_adjustment=False, mom2_n_samples=100000, context_template_length_params=ROME_TEMPLATES)),
    Reference("003", "memit", "gpt-j", f"{EASYEDIT}@21114513 hparams/MEMIT/gpt-j-6B.yaml", two_stage(
        layers=LAYERS_GPTJ, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("003", "memit", "llama2-7b", f"{EASYEDIT}@08da19c8 hparams/MEMIT/llama-7b.yaml", two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=1e-3, clamp_norm_factor=4.0,
        mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("003", "pmet", "gpt-j", f"{EASYEDIT}@3b5434dd hparams/PMET/gpt-j-6B.yaml", two_stage(
        layers=LAYERS_GPTJ, v_num_grad_steps=30, v_lr=0.2, v_weight_decay=0.5, clamp_norm_factor=0.75,
        kl_factor=1.0, nll_loss_factor=1.0, mom2_update_weight=15000.0, mom2_n_samples=100000)),
    Reference("003", "pmet", "llama2-7b", f"{EASYEDIT}@0782c85b hparams/PMET/llama-7b.yaml", two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=1.0,
        nll_loss_factor=1.0, mom2_update_weight=15000.0, mom2_n_samples=100000)),
    # ------------------------------------------------------------------ seed 004 (ENCORE repository)
    # MEMIT and ENCORE: the same values in scalable-model-editing/knowledge-editing-regularization@df306172.
    Reference("004", "memit", "gpt2-xl", f"{ENCORE} hparams/MEMIT/gpt2-xl.json", {**two_stage(
        layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=20000.0, mom2_n_samples=100000), **PREV_EDIT_KEYS}),
    Reference("004", "memit", "llama2-7b", f"{ENCORE} hparams/MEMIT/llama2-7b.json", {**two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=100000), **PREV_EDIT_KEYS}),
    Reference("004", "memit", "llama3-8b", f"{ENCORE} hparams/MEMIT/llama3-8b.json", {**two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=10000), **PREV_EDIT_KEYS}),
    # ENCORE = MEMIT + prob_cutoff (MPES) + update_norm_lambda (norm constraint) + add_prev_edits; on
    # zsRE the paper's Table 11 gives other cut-offs and λn.
    Reference("004", "encore", "gpt2-xl", f"{ENCORE} hparams/ENCORE/gpt2-xl.json", {**two_stage(
        layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=20000.0, mom2_n_samples=100000), **PREV_EDIT_KEYS,
        "wrapper.mpes.prob_cutoff": -4.0, "wrapper.norm_constraint.norm_lambda": 10.0},
        paper={"seed004_tables12_14": {"wrapper.mpes.prob_cutoff": -5.0, "wrapper.norm_constraint.norm_lambda": 40.0}}),
    Reference("004", "encore", "llama2-7b", f"{ENCORE} hparams/ENCORE/llama2-7b.json", {**two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=100000), **PREV_EDIT_KEYS,
        "wrapper.mpes.prob_cutoff": -3.0, "wrapper.norm_constraint.norm_lambda": 10.0}),
    Reference("004", "encore", "llama3-8b", f"{ENCORE} hparams/ENCORE/llama3-8b.json", {**two_stage(
        layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=15000.0, mom2_n_samples=10000), **PREV_EDIT_KEYS,
        "wrapper.mpes.prob_cutoff": -2.0, "wrapper.norm_constraint.norm_lambda": 20.0},
        paper={"seed004_tables12_14": {"wrapper.mpes.prob_cutoff": -4.0, "wrapper.norm_constraint.norm_lambda": 10.0}}),
    # AlphaEdit: its key memory is built in (no add_prev_edits key in these jsons).
    Reference("004", "alphaedit", "gpt2-xl", f"{ENCORE} hparams/AlphaEdit/gpt2-xl.json", two_stage(
        layers=LAYERS_GPT2XL, v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_n_samples=100000, nullspace_threshold=2e-2, l2=10.0)),
    Reference("004", "alphaedit", "llama2-7b", f"{ENCORE_REG} hparams/AlphaEdit/llama2-7b.json (= {ENCORE})",
              two_stage(layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.1, v_weight_decay=0.5,
                        clamp_norm_factor=0.75, mom2_n_samples=100000, nullspace_threshold=2e-2, l2=10.0)),
    Reference("004", "alphaedit", "llama3-8b", f"{ENCORE_REG} hparams/AlphaEdit/llama3-8b.json (= {ENCORE})",
              two_stage(layers=LAYERS_LLAMA, v_num_grad_steps=25, v_lr=0.1, v_weight_decay=0.5,
                        clamp_norm_factor=0.75, mom2_n_samples=10000, nullspace_threshold=2e-2, l2=10.0)),
    # EMMET: the Llama jsons say λp 100000; the paper's Tables 6 and 9 use 15000 (gpt2-xl: 10000 in both).
    Reference("004", "emmet", "gpt2-xl", f"{ENCORE} hparams/EMMET/gpt2-xl.json", {**two_stage(
        layers=[17], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=10000.0, mom2_n_samples=100000, emmet_lambda=0.1), **PREV_EDIT_KEYS}),
    Reference("004", "emmet", "llama2-7b", f"{ENCORE} hparams/EMMET/llama2-7b.json", {**two_stage(
        layers=[5], v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=100000.0, mom2_n_samples=100000, emmet_lambda=0.1), **PREV_EDIT_KEYS},
        paper={"*": {"algo.mom2_update_weight": 15000.0}}),
    Reference("004", "emmet", "llama3-8b", f"{ENCORE} hparams/EMMET/llama3-8b.json", {**two_stage(
        layers=[5], v_num_grad_steps=25, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=0.75,
        mom2_update_weight=100000.0, mom2_n_samples=10000, emmet_lambda=0.1), **PREV_EDIT_KEYS},
        paper={"*": {"algo.mom2_update_weight": 15000.0}}),
]  # fmt: skip

REFERENCES = {(r.seed, r.method, r.model): r for r in REFERENCE}

#: Sweep keys that cannot change a cell's hyper-parameters (one value of each is composed).
IRRELEVANT_SWEEPS = ("trial", "data.num_edits")


@pytest.fixture(scope="module", autouse=True)
def _hydra(hydra_context):
    """Compose from the packaged config tree in this module."""


def compose_reference_cell(overrides: list[str]) -> DictConfig:
    """The job config of one launch cell, per-model paper values merged (the one use of the config API here)."""
    cfg = compose("config", overrides=overrides)
    finalize_config(cfg, overrides)
    return cfg


def _plain(value: object) -> object:
    value = getattr(value, "value", value)
    return list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else value


def preset_cells(preset: str) -> list[list[str]]:
    """The cells of a preset's launch commands, one per combination of the hyper-parameter-relevant sweeps."""
    cells, seen = [], set()
    for command in launch_commands(preset):
        for cell in full_product(command):
            key = tuple(item for item in cell if item.split("=", 1)[0] not in IRRELEVANT_SWEEPS)
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    return cells


@functools.cache
def composed_preset(preset: str) -> tuple[tuple[tuple[str, ...], str, str, DictConfig], ...]:
    """``(cell, method, model, config)`` for every cell of ``preset``; method ``encore`` for the ENCORE preset."""
    rows = []
    for cell in preset_cells(preset):
        cfg = compose_reference_cell(cell)
        method = "encore" if cfg.wrapper.get("preset") == "encore" else str(_plain(cfg.algo.name))
        rows.append((tuple(cell), method, cfg.model.name, cfg))
    return tuple(rows)


def seed_of(preset: str) -> str:
    """``seed000_table1`` → ``000``."""
    return preset[len("seed") : len("seed") + 3]


@pytest.mark.parametrize("preset", PRESETS)
def test_cells_equal_the_reference_files(preset: str) -> None:
    problems = []
    for cell, method, model, cfg in composed_preset(preset):
        reference = REFERENCES.get((seed_of(preset), method, model))
        if reference is None:
            problems.append(f"{list(cell)}: no reference entry for seed {seed_of(preset)} {method} {model}")
            continue
        for key, expected in reference.expected(preset).items():
            got = _plain(OmegaConf.select(cfg, key, default="<missing>"))
            if got != expected:
                problems.append(f"{list(cell)}: {key} = {got!r}, {reference.source} has {expected!r}")
    assert not problems, "\n".join(problems)


def test_every_reference_entry_is_used() -> None:
    used = {(seed_of(p), method, model) for p in PRESETS for _, method, model, _ in composed_preset(p)}
    assert set(REFERENCES) <= used, f"entries no preset cell reaches: {sorted(set(REFERENCES) - used)}"
    assert len(REFERENCES) == len(REFERENCE), "two entries for the same seed × method × model"
