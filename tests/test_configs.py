"""The Hydra config tree composes, typos fail at composition, and invalid combinations fail early.

This follows lightning-hydra-template's ``test_configs``. Every option of every group is composed
from the packaged tree, as the installed ``edit-run`` sees it. Misspelled groups, keys and enum values
must fail at composition with a message that names the valid choices. Per-model paper
hyper-parameters must sit below command-line overrides. Every algorithm × wrapper combination is
checked before any model is loaded.
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from edit_runner.config import (
    MetricDefinition,
    ProtocolName,
    apply_paper_hyperparameters,
    check_override_keys,
    effective_config,
    enabled_wrappers,
)
from edit_runner.editing.algorithms import algorithm_registry, algorithm_spec
from edit_runner.editing.wrappers import check_combination, wrapper_names
from edit_runner.editing.wrappers.iterative import IterationStop
from edit_runner.errors import ConfigError

CONF = Path(str(resources.files("edit_runner.conf")))


def options(group: str) -> list[str]:
    """The config files of a group in the packaged tree (``hydra/launcher`` included)."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


#: Values these options need (their yaml says ``path: ???``), given as they would be on the command line.
REQUIRED = {
    ("model", "local"): ["model.path=/models/any-hf-dir"],
    ("data", "custom"): ["data.path=/data/my_edits.jsonl"],
    ("data", "easyedit"): ["data.path=/data/mcf_739.easyedit.json"],
}


@pytest.fixture(scope="module", autouse=True)
def _hydra(hydra_context):
    """Compose from the packaged config tree in this module."""


def job(overrides: list[str]) -> DictConfig:
    """Compose the job config and check that nothing mandatory is left and every interpolation resolves."""
    cfg = compose("config", overrides=overrides)
    assert not OmegaConf.missing_keys(cfg), (
        f"{overrides}: unset mandatory values {OmegaConf.missing_keys(cfg)}"
    )
    OmegaConf.to_container(cfg, resolve=True)
    return cfg


def failure(overrides: list[str], exc_type: type[Exception] = Exception) -> str:
    """The full message (with its cause) of a composition that must fail."""
    with pytest.raises(exc_type) as info:
        compose("config", overrides=overrides)
    parts, error = [], info.value
    while error is not None:
        parts.append(str(error))
        error = error.__cause__
    return "\n".join(parts)


def _name(node) -> str:
    return node.value if hasattr(node, "value") else str(node)


# --------------------------------------------------------------------------------------------------
# Every option of every group composes
# --------------------------------------------------------------------------------------------------


def test_default_config_is_the_offline_demo_run():
    cfg = job([])
    assert cfg.model.name == "smollm2-135m"
    assert _name(cfg.algo.name) == "rome"
    assert cfg.data.name == "demo" and cfg.data.num_edits == 10
    assert _name(cfg.protocol.name) == "batched"
    assert enabled_wrappers(cfg) == []
    assert cfg.experiment is None


def test_every_group_has_options():
    for group in ("model", "algo", "data", "wrapper", "protocol", "eval", "experiment", "hydra/launcher"):
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("name", options("model"))
def test_model_options_compose(name: str):
    cfg = job([f"model={name}", *REQUIRED.get(("model", name), [])])
    assert cfg.model.name == name


@pytest.mark.parametrize("name", options("algo"))
def test_algo_options_compose(name: str):
    cfg = job([f"algo={name}"])
    assert _name(cfg.algo.name) == name
    assert algorithm_spec(name).name == name  # every algo file has a registered algorithm
    for model, values in cfg.algo.per_model.items():
        assert model in options("model"), f"algo/{name}.yaml per_model names an unknown model {model!r}"
        assert set(values) <= set(cfg.algo), f"algo/{name}.yaml per_model.{model} sets unknown keys"


@pytest.mark.parametrize("name", options("data"))
def test_data_options_compose(name: str):
    cfg = job([f"data={name}", *REQUIRED.get(("data", name), [])])
    assert cfg.data.name == name


@pytest.mark.parametrize("name", options("wrapper"))
def test_single_wrappers_compose(name: str):
    cfg = job([f"wrapper=[{name}]"])
    expected = {
        "none": [],
        "encore": ["mpes", "norm_constraint", "prev_edit_keys"],
    }.get(name, [name])
    assert enabled_wrappers(cfg) == expected
    assert (cfg.wrapper.get("preset") == "encore") == (name == "encore")


@pytest.mark.parametrize(
    "wrappers",
    [
        ["iterative", "na"],
        ["iterative", "nap"],
        ["iterative", "na", "mpes"],
        ["mpes", "norm_constraint"],
        ["iterative", "encore"],
        ["d4s", "mpes"],
    ],
)
def test_wrapper_lists_compose(wrappers: list[str]):
    cfg = job(["algo=memit", f"wrapper=[{','.join(wrappers)}]"])
    enabled = set(enabled_wrappers(cfg))
    for name in wrappers:
        assert enabled >= ({"mpes", "norm_constraint", "prev_edit_keys"} if name == "encore" else {name})


def test_wrapper_none_as_scalar():
    assert enabled_wrappers(job(["wrapper=none"])) == []


@pytest.mark.parametrize("name", options("protocol"))
def test_protocol_options_compose(name: str):
    assert _name(job([f"protocol={name}"]).protocol.name) == name


@pytest.mark.parametrize("name", options("eval"))
def test_eval_options_compose(name: str):
    cfg = job([f"eval={name}"])
    if name == "health":
        assert cfg.eval.every_n_edits and cfg.eval.downstream.tasks


@pytest.mark.parametrize("name", ["basic", *options("hydra/launcher")])
def test_launcher_options_compose(name: str):
    cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == name
    if name == "slurm":
        assert "SlurmLauncher" in cfg.hydra.launcher._target_
        assert cfg.hydra.launcher.max_num_timeout >= 1
        assert cfg.hydra.launcher.additional_parameters.requeue is True
    elif name == "local":
        assert "LocalLauncher" in cfg.hydra.launcher._target_ and "submitit" in cfg.hydra.launcher._target_


def test_sweep_dir_without_a_preset_is_deterministic():
    cfg = compose("config", overrides=[], return_hydra_config=True)
    assert cfg.hydra.sweep.dir == f"{cfg.output_root}/multirun/default"


def test_slurm_launcher_settings_are_overridable():
    cfg = compose(
        "config",
        overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"],
        return_hydra_config=True,
    )
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.timeout_min == 60


def test_readme_style_override_line_composes():
    cfg = job(
        ["algo=rome", "model=gpt2-xl", "data=counterfact", "data.num_edits=100", "protocol=sequential",
         "protocol.batch_size=1"]
    )  # fmt: skip
    assert cfg.data.num_edits == 100 and cfg.protocol.batch_size == 1


# --------------------------------------------------------------------------------------------------
# Typos fail at composition, naming the valid choices
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "typo"),
    [("algo", "romee"), ("model", "gpt3"), ("data", "counterfakt"), ("protocol", "batch"), ("eval", "healthy"),
     ("experiment", "seed000")],
)  # fmt: skip
def test_unknown_group_option_lists_the_options(group: str, typo: str):
    message = failure([f"{group}={typo}"], MissingConfigException)
    assert f"{group}/{typo}" in message
    for valid in options(group):
        assert valid in message, f"{valid!r} not listed for an unknown {group}"


def test_unknown_wrapper_lists_the_wrappers():
    message = failure(["wrapper=mpess"], MissingConfigException)
    assert "wrapper/mpess" in message
    for valid in options("wrapper"):
        assert valid in message


def test_unknown_wrapper_in_a_list_lists_the_wrappers():
    """Hydra reports ``wrapper=[iterative,mpess]`` without the options; edit-run checks the list first."""
    with pytest.raises(ConfigError) as info:
        check_override_keys(["wrapper=[iterative,mpess]"], CONF)
    message = str(info.value)
    assert "'mpess'" in message and "Did you mean 'mpes'" in message
    for valid in options("wrapper"):
        assert valid in message
    check_override_keys(["wrapper=[iterative,mpes]"], CONF)


def test_unknown_launcher_lists_the_launchers():
    message = failure(["hydra/launcher=slrum"], MissingConfigException)
    assert "slurm" in message and "local" in message


@pytest.mark.parametrize(
    ("override", "schema"),
    [("algo.v_lrr=1", "RomeConfig"), ("model.dytpe=float16", "ModelConfig"), ("data.num_edit=5", "DataConfig"),
     ("protocol.batchsize=4", "ProtocolConfig"), ("eval.every_n=10", "EvalConfig"), ("sed=1", "RunConfig")],
)  # fmt: skip
def test_unknown_key_fails_naming_key_and_schema(override: str, schema: str):
    message = failure([override], ConfigCompositionException)
    key = override.split("=", 1)[0]
    assert key.rsplit(".", 1)[-1] in message and schema in message
    assert f"+{override}" in message  # Hydra's hint for adding a key on purpose


def test_unknown_key_in_an_enabled_wrapper_fails():
    message = failure(["wrapper=[iterative]", "wrapper.iterative.max_iters=3"], ConfigCompositionException)
    assert "max_iters" in message and "IterativeConfig" in message


def _lists_all(message: str, values: list[str]) -> bool:
    return all(value in message for value in values)


def test_bad_protocol_name_lists_the_protocols():
    message = failure(["protocol=batched", "protocol.name=foo"], ConfigCompositionException)
    assert "'foo'" in message and "protocol.name" in message
    assert _lists_all(message, [p.value for p in ProtocolName])


def test_bad_stop_rule_lists_the_stop_rules():
    message = failure(
        ["wrapper=[iterative]", "wrapper.iterative.stop_rule=sometimes"], ConfigCompositionException
    )
    assert "'sometimes'" in message and "stop_rule" in message
    assert _lists_all(message, [r.value for r in IterationStop])


@pytest.mark.parametrize(
    ("overrides", "values"),
    [
        (["eval.metrics=rouge"], [m.value for m in MetricDefinition]),
        (["data.format=xml"], ["counterfact", "multi_counterfact", "zsre", "easyedit", "custom", "demo"]),
        (["model.source=hub"], ["auto", "smollm2", "gguf"]),
        (["stats.corpus=wiki"], ["auto", "hf", "text", "model_samples"]),
        (["wrapper=[na]", "wrapper.na.weighting=mean"], ["paper", "pooled"]),
        (["wrapper=[d4s]", "wrapper.d4s.residual=fresh"], ["reference", "remeasured"]),
    ],
)
def test_bad_enum_values_list_the_choices(overrides: list[str], values: list[str]):
    message = failure(overrides, ConfigCompositionException)
    assert overrides[-1].split("=", 1)[1] in message
    assert _lists_all(message, values), message


def test_key_of_another_algorithm_fails_listing_the_valid_keys():
    """``algo=rome algo.emmet_lambda=…`` is refused: ROME's schema has no such key (issue 9)."""
    assert "emmet_lambda" in failure(["algo=rome", "algo.emmet_lambda=0.1"], ConfigCompositionException)
    with pytest.raises(ConfigError) as info:
        check_override_keys(["algo=rome", "algo.emmet_lambda=0.1"], CONF)
    message = str(info.value)
    assert "algo.emmet_lambda" in message and "algo=rome" in message and "clamp_norm_factor" in message
    check_override_keys(["algo=emmet", "algo.emmet_lambda=0.1"], CONF)
    with pytest.raises(ConfigError, match="Did you mean 'norm_lambda'"):
        check_override_keys(["wrapper=[norm_constraint]", "wrapper.norm_constraint.norm_lambd=2"], CONF)
    with pytest.raises(ConfigError, match="algo=memit"):  # the preset's algorithm
        check_override_keys(["experiment=seed004_tables2_4", "algo.consistent_keys=true"], CONF)


def test_unknown_algorithm_name_lists_the_algorithms(tmp_path):
    from edit_runner.plan import plan_run

    with pytest.raises(ConfigError) as info:
        plan_run(effective_config(job(["algo.name=romee"])), tmp_path)
    assert _lists_all(str(info.value), algorithm_registry().names())
    with pytest.raises(ConfigError, match="algo=memit"):  # a name that does not match the composed schema
        plan_run(effective_config(job(["algo.name=memit"])), tmp_path)


def test_wrong_value_type_fails():
    message = failure(["data.num_edits=many"], ConfigCompositionException)
    assert "num_edits" in message and "many" in message


# --------------------------------------------------------------------------------------------------
# Per-model paper hyper-parameters sit below command-line overrides
# --------------------------------------------------------------------------------------------------


def paper_cfg(overrides: list[str]) -> DictConfig:
    cfg = job(overrides)
    apply_paper_hyperparameters(cfg, overrides)
    return cfg


def test_memit_gpt2_xl_uses_the_papers_layers_and_lambda():
    cfg = paper_cfg(["algo=memit", "model=gpt2-xl"])
    assert list(cfg.algo.layers) == [13, 14, 15, 16, 17]
    assert cfg.algo.mom2_update_weight == 20000.0
    assert cfg.algo.v_num_grad_steps == 20


def test_per_model_values_only_apply_to_their_model():
    cfg = paper_cfg(["algo=memit", "model=gpt-j"])
    assert list(cfg.algo.layers) == [3, 4, 5, 6, 7, 8]
    assert cfg.algo.mom2_update_weight == 15000.0


def test_command_line_override_wins_over_per_model():
    # pmet's gpt2-xl entry sets v_lr 0.5 (base 0.2); the command line says 0.1
    overrides = ["algo=pmet", "model=gpt2-xl", "algo.v_lr=0.1"]
    cfg = paper_cfg(overrides)
    assert cfg.algo.v_lr == 0.1
    assert cfg.algo.mom2_update_weight == 20000.0  # the rest of the per-model entry still applies
    assert paper_cfg(["algo=pmet", "model=gpt2-xl"]).algo.v_lr == 0.5


def test_command_line_layers_win_over_per_model():
    cfg = paper_cfg(["algo=memit", "model=gpt2-xl", "algo.layers=[15,16]"])
    assert list(cfg.algo.layers) == [15, 16]
    assert cfg.algo.mom2_update_weight == 20000.0


def test_wrapper_per_model_values_and_override():
    cfg = paper_cfg(["algo=memit", "model=llama3-8b", "wrapper=[encore]"])
    assert cfg.wrapper.mpes.prob_cutoff == -2 and cfg.wrapper.norm_constraint.norm_lambda == 20.0
    cfg = paper_cfg(["algo=memit", "model=llama3-8b", "wrapper=[encore]", "wrapper.mpes.prob_cutoff=-5"])
    assert cfg.wrapper.mpes.prob_cutoff == -5 and cfg.wrapper.norm_constraint.norm_lambda == 20.0


def test_per_model_entries_of_disabled_wrappers_are_ignored():
    cfg = paper_cfg(["algo=memit", "model=llama3-8b", "++wrapper.per_model.llama3-8b.mpes.prob_cutoff=-3"])
    assert enabled_wrappers(cfg) == []


# --------------------------------------------------------------------------------------------------
# Algorithm × wrapper combinations: checked before any model is loaded
# --------------------------------------------------------------------------------------------------

ALGOS = algorithm_registry().names()
HOOK_WRAPPERS = ["iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys", "d4s"]

#: Which algorithms each wrapper can wrap (DESIGN.md: FT has no optimisation or spread stage; the
#: spread-equation wrappers need the MEMIT-family normal equations; AlphaEdit takes the previous-edit
#: key memory as its key history (the ENCORE repository's AlphaEdit); D4S is a MEMIT/PMET running-sum solve).
VALID = {
    "iterative": {"rome", "r_rome", "memit", "pmet", "emmet", "alphaedit"},
    "na": {"rome", "r_rome", "memit", "pmet", "emmet", "alphaedit"},
    "nap": {"rome", "r_rome", "memit", "pmet", "emmet", "alphaedit"},
    "mpes": {"rome", "r_rome", "memit", "pmet", "emmet", "alphaedit"},
    "norm_constraint": {"memit", "pmet", "emmet", "alphaedit"},
    "prev_edit_keys": {"memit", "pmet", "emmet", "alphaedit"},
    "d4s": {"memit", "pmet"},
}
CONFLICTS = [{"na", "nap"}, {"iterative", "d4s"}]


def test_the_matrix_covers_every_registered_wrapper():
    assert set(wrapper_names()) == set(VALID)


def expected_valid(algo: str, wrappers: tuple[str, ...]) -> bool:
    chosen = set(wrappers)
    return all(algo in VALID[w] for w in wrappers) and not any(pair <= chosen for pair in CONFLICTS)


@pytest.mark.parametrize("algo", ALGOS)
def test_full_combination_matrix(algo: str):
    spec = algorithm_spec(algo)
    for size in range(len(HOOK_WRAPPERS) + 1):
        for wrappers in itertools.combinations(HOOK_WRAPPERS, size):
            if expected_valid(algo, wrappers):
                check_combination(spec, list(wrappers))
            else:
                with pytest.raises(ConfigError):
                    check_combination(spec, list(wrappers))


@pytest.mark.parametrize(
    ("algo", "wrappers", "named"),
    [
        ("ft", ["iterative"], ["wrapper=iterative", "algo=ft"]),
        ("ft", ["mpes"], ["wrapper=mpes", "algo=ft"]),
        ("ft_c", ["na"], ["wrapper=na", "algo=ft_c"]),
        ("ft", ["encore"], ["wrapper=mpes", "algo=ft"]),
        ("rome", ["d4s"], ["wrapper=d4s", "algo=rome"]),
        ("rome", ["norm_constraint"], ["wrapper=norm_constraint", "algo=rome"]),
        ("alphaedit", ["d4s"], ["wrapper=d4s", "algo=alphaedit"]),
        ("emmet", ["d4s"], ["wrapper=d4s", "algo=emmet"]),
        ("memit", ["iterative", "d4s"], ["wrapper=iterative", "wrapper=d4s"]),
        ("memit", ["na", "nap"], ["wrapper=na", "wrapper=nap"]),
    ],
)
def test_invalid_combinations_fail_on_the_composed_config(algo: str, wrappers: list[str], named: list[str]):
    cfg = job([f"algo={algo}", f"wrapper=[{','.join(wrappers)}]"])
    with pytest.raises(ConfigError) as info:
        check_combination(algorithm_spec(_name(cfg.algo.name)), enabled_wrappers(cfg))
    for text in named:
        assert text in str(info.value)


def test_ft_error_names_the_missing_stage_and_the_valid_algorithms():
    with pytest.raises(ConfigError) as info:
        check_combination(algorithm_spec("ft"), ["mpes"])
    message = str(info.value)
    assert "no spread stage" in message
    for algo in VALID["mpes"]:
        assert algo in message


def test_invalid_combination_fails_before_any_model_or_data_is_loaded(tmp_path, monkeypatch):
    """``plan_run`` rejects the combination first: it never reaches the data files or the model loader."""
    from edit_runner import plan
    from edit_runner.models import loading

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before rejecting the combination")

    monkeypatch.setattr(loading, "load_model", forbidden)
    monkeypatch.setattr(plan, "load_edit_records", forbidden)
    cfg = job(["algo=ft", "wrapper=[iterative,na]", "data=easyedit", "data.path=/nonexistent.json"])
    with pytest.raises(ConfigError, match="wrapper=iterative cannot wrap algo=ft"):
        plan.plan_run(effective_config(cfg), tmp_path)
