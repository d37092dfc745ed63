"""Enums, registries and config files name the same things (one source, or a test that they agree)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from edit_runner.config import CorpusSource, DataFormat, MetricDefinition
from edit_runner.data.loaders import DATASET_FORMATS
from edit_runner.editing.algorithms import algorithm_registry
from edit_runner.editing.corpora import corpus_registry
from edit_runner.editing.wrappers import RESERVED_KEYS, wrapper_names, wrapper_registry
from edit_runner.evaluation import edit_metrics

CONF = Path(str(resources.files("edit_runner.conf")))


def test_every_algorithm_has_its_yaml_and_every_yaml_its_algorithm():
    yamls = {path.stem for path in (CONF / "algo").glob("*.yaml")}
    assert yamls == set(algorithm_registry().names())
    for name in yamls:
        node = OmegaConf.load(CONF / "algo" / f"{name}.yaml")
        assert node.name == name, f"conf/algo/{name}.yaml names itself {node.name!r}"
        assert f"/schema/algo/{name}@_here_" in list(node.defaults), f"conf/algo/{name}.yaml must take its schema"


def test_every_wrapper_has_its_yaml_and_every_wrapper_yaml_sets_registered_wrappers():
    yamls = {path.stem for path in (CONF / "wrapper").glob("*.yaml")}
    assert set(wrapper_names()) <= yamls
    registry = wrapper_registry()
    for name in yamls:
        node = OmegaConf.load(CONF / "wrapper" / f"{name}.yaml")
        keys = [k for k in node if k not in (*RESERVED_KEYS, "defaults")]
        for key in keys:
            assert key in registry, f"conf/wrapper/{name}.yaml sets unknown wrapper {key!r}"
            assert f"/schema/wrapper/{key}@{key}" in list(node.defaults), f"conf/wrapper/{name}.yaml: {key} needs its schema"


def test_corpus_enum_equals_the_corpus_registry():
    assert {c.value for c in CorpusSource} == set(corpus_registry().names())


def test_data_format_enum_equals_the_loader_registry():
    assert {f.value for f in DataFormat} == set(DATASET_FORMATS.names())


def test_metric_definitions_have_one_source():
    assert edit_metrics.MetricDefinition is MetricDefinition
