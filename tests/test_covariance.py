"""Covariance corpora (``stats.corpus``) and their cache keys; import of published MEMIT statistics.

The expected identities, settings and cache paths of ``text``, ``hf``, ``model_samples`` and
``auto`` were computed with the runner's former if-chain ``build_covariance`` and are hard-coded
here: caches written before the corpus registry must stay valid. No model is run and nothing is
downloaded (the Wikipedia corpus is built from an in-memory dataset).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from edit_runner.config import CorpusSource, StatsConfig
from edit_runner.editing import corpora
from edit_runner.editing.corpora import WikipediaCorpus, build_covariance, corpus_registry
from edit_runner.editing.covariance import CovarianceCache, CovarianceSettings
from edit_runner.errors import ConfigError
from edit_runner.models.loading import LoadedModel

MODULE = "transformer.h.1.mlp.c_proj"
MODEL_DIR = Path("/cache/stats/org_tiny-model-6367c48d")


def fake_loaded(**config) -> LoadedModel:
    """A LoadedModel whose model is only a config (nothing here runs it)."""
    model = SimpleNamespace(config=SimpleNamespace(**config))
    return LoadedModel(model=model, tokenizer=None, layout=None, name="org/tiny-model", revision="abc123")


def stats_config(**values) -> StatsConfig:
    """``stats`` as the runner passes it: a DictConfig of StatsConfig with overrides."""
    return OmegaConf.merge(OmegaConf.structured(StatsConfig), values)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """The text file the expected ``text-corpus-0dc8e2d0cbf1`` identity was computed from."""
    path = tmp_path / "corpus.txt"
    lines = [f"Paragraph number {i} about something long enough." for i in range(30)]
    path.write_text("= Heading =\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings_tuple(cov) -> tuple:
    """The cache settings as a plain tuple."""
    return dataclasses.astuple(cov.settings)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_has_one_source_per_corpus_value():
    assert set(corpus_registry().names()) == {c.value for c in CorpusSource}


def test_unknown_corpus_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"Did you mean 'wikipedia'\?.*Valid choices: auto, hf, model_samples, npz, text"):
        corpus_registry().get("wikipeda")
    stats = SimpleNamespace(corpus="modle_samples", batch_size=16)
    with pytest.raises(ConfigError, match="Did you mean 'model_samples'"):
        build_covariance(stats, 1000, "float32", None, fake_loaded(), Path("/cache"))


# --------------------------------------------------------------------------------------------------
# Cache identities of the existing corpora (unchanged by the registry)
# --------------------------------------------------------------------------------------------------


def test_text_corpus_keys(corpus_file):
    for stats in (stats_config(corpus="text", text_path=str(corpus_file)), StatsConfig(corpus=CorpusSource.text, text_path=str(corpus_file))):
        cov = build_covariance(stats, 1000, "float32", None, fake_loaded(), Path("/cache"))
        assert cov.corpus_ident == "text-corpus-0dc8e2d0cbf1"
        assert settings_tuple(cov) == ("org/tiny-model", "abc123", 1000, 1024, "float32", 16)
        assert cov.path_for(MODULE, cov.corpus_ident) == (
            MODEL_DIR / "text-corpus-0dc8e2d0cbf1" / "transformer.h.1.mlp.c_proj_float32_mom2_1000_len1024.pt"
        )


@pytest.mark.parametrize(("stats_max", "model_max", "expected"), [(None, 512, 512), (256, 512, 256), (None, None, 1024)])
def test_hf_corpus_keys(stats_max, model_max, expected):
    stats = stats_config(corpus="hf", max_length=stats_max)
    cov = build_covariance(stats, 1000, "float32", model_max, fake_loaded(), Path("/cache"))
    assert cov.corpus_ident == "hf-wikitext-wikitext-103-raw-v1-train"
    assert settings_tuple(cov) == ("org/tiny-model", "abc123", 1000, expected, "float32", 16)
    assert cov.path_for(MODULE, cov.corpus_ident) == (
        MODEL_DIR / "hf-wikitext-wikitext-103-raw-v1-train" / f"transformer.h.1.mlp.c_proj_float32_mom2_1000_len{expected}.pt"
    )


def test_model_samples_keys_and_cached_texts(tmp_path):
    cov = build_covariance(stats_config(corpus="model_samples"), 1000, "float32", None, fake_loaded(), Path("/cache"))
    assert cov.corpus_ident == "model-samples-128x64-seed1"
    assert settings_tuple(cov) == ("org/tiny-model", "abc123", 128, 1024, "float32", 16)
    assert cov.path_for(MODULE, cov.corpus_ident) == (
        MODEL_DIR / "model-samples-128x64-seed1" / "transformer.h.1.mlp.c_proj_float32_mom2_128_len1024.pt"
    )
    # The generated texts are read back from the same file as before (no model needed once cached).
    cached = tmp_path / "corpora" / "org_tiny-model-6367c48d-model-samples-128x64-seed1.json"
    cached.parent.mkdir()
    cached.write_text(json.dumps({"ident": "model-samples-128x64-seed1", "texts": ["a", "b"]}))
    cov = build_covariance(stats_config(corpus="model_samples"), 1000, "float32", None, fake_loaded(), tmp_path)
    assert cov.corpus().texts == ["a", "b"]


def test_text_corpus_needs_an_existing_file(tmp_path):
    with pytest.raises(ConfigError, match="stats.text_path: stats.corpus=text needs a text file"):
        build_covariance(stats_config(corpus="text"), 1000, "float32", None, fake_loaded(), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_covariance(stats_config(corpus="text", text_path=str(tmp_path / "nope.txt")), 1000, "float32", None, fake_loaded(), tmp_path)


@pytest.mark.parametrize(
    ("text", "hub", "expected"),
    [(True, False, "text-corpus-0dc8e2d0cbf1"), (False, True, "hf-wikitext-wikitext-103-raw-v1-train"), (False, False, "model-samples-128x64-seed1")],
)
def test_auto_resolution(monkeypatch, corpus_file, text, hub, expected):
    monkeypatch.setattr(corpora, "hub_reachable", lambda: hub)
    stats = stats_config(text_path=str(corpus_file) if text else None)
    cov = build_covariance(stats, 1000, "float32", None, fake_loaded(), Path("/cache"))
    assert cov.corpus_ident == expected
    assert cov.settings.n_samples == (128 if expected.startswith("model-samples") else 1000)


# --------------------------------------------------------------------------------------------------
# Wikipedia (the reference layer_stats sample)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "stats_max", "model_max", "expected"),
    [({"n_positions": 1024}, None, None, 1024), ({"n_positions": 2048}, None, None, 2048),
     ({"max_position_embeddings": 131072}, None, None, 4096), ({"n_positions": 1024}, 128, 512, 128),
     ({"n_positions": 1024}, None, 512, 512)],
)
def test_wikipedia_keys(config, stats_max, model_max, expected):
    stats = stats_config(corpus="wikipedia", max_length=stats_max)
    cov = build_covariance(stats, 100000, "float32", model_max, fake_loaded(**config), Path("/cache"))
    assert cov.corpus_ident == "wikipedia-20200501.en"
    assert settings_tuple(cov) == ("org/tiny-model", "abc123", 100000, expected, "float32", 16)
    other = stats_config(corpus="wikipedia", wikipedia_dataset="wikimedia/wikipedia", wikipedia_dump="20231101.en")
    assert build_covariance(other, 10, "float32", None, fake_loaded(**config), Path("/cache")).corpus_ident == (
        "wikimedia_wikipedia-20231101.en"
    )


def test_wikipedia_takes_the_reference_article_subset():
    rows = [{"text": f"article {i}" if i % 7 else ""} for i in range(50)]
    calls = []

    def loader(dataset, config, split, source):
        calls.append((dataset, config, split, source))
        return rows

    corpus = WikipediaCorpus(20, 1024, "wikipedia", "20200501.en", loader=loader).build()
    order = list(range(50))
    random.Random(1).shuffle(order)
    assert calls == [("wikipedia", "20200501.en", "train", "wikipedia")]
    assert corpus.ident == "wikipedia-20200501.en"
    assert corpus.texts == [rows[i]["text"] for i in order[:20]]


# --------------------------------------------------------------------------------------------------
# Import of published statistics (stats.corpus=npz)
# --------------------------------------------------------------------------------------------------


def write_published(directory: Path, module: str, dtype: str, sample_size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A per-layer file in the reference layout (``CombinedStat(mom2=SecondMoment())`` + ``sample_size``)."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((37, 8)).astype(dtype)
    mom2, count = feats.T @ feats, 37 * 1000 + 3
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(
        directory / f"{module}_{dtype}_mom2_{sample_size}.npz",
        **{"mom2.constructor": np.array("util.runningstats.SecondMoment()"), "mom2.count": np.array(count),
           "mom2.mom2": mom2, "sample_size": np.array(sample_size)},
    )
    return mom2, count


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_npz_import_is_exactly_mom2_over_count(tmp_path, dtype):
    directory = tmp_path / "gpt-j" / "wikipedia_stats"
    module = "transformer.h.5.mlp.fc_out"
    mom2, count = write_published(directory, module, dtype, 1000)
    stats = stats_config(corpus="npz", import_dir=str(directory))
    cov = build_covariance(stats, 1000, dtype, None, fake_loaded(n_positions=2048), tmp_path / "cache")
    assert cov.corpus_ident.startswith("npz-") and settings_tuple(cov)[2:4] == (1000, 2048)
    cov.ensure(None, None, [module])
    expected = (torch.from_numpy(mom2) / count).float()  # SecondMoment.moment().float(), as get_cov
    assert torch.equal(cov.get(module), expected)
    assert np.array_equal(cov.get(module).numpy(), (mom2 / count).astype(np.float32))
    # Imported into the project's cache: a fresh provider reads it without the published file.
    (directory / f"{module}_{dtype}_mom2_1000.npz").unlink()
    again = build_covariance(stats, 1000, dtype, None, fake_loaded(n_positions=2048), tmp_path / "cache")
    again.ensure(None, None, [module])
    assert torch.equal(again.get(module), expected)


def test_npz_missing_layer_names_the_expected_file(tmp_path):
    directory = tmp_path / "stats"
    write_published(directory, "transformer.h.5.mlp.fc_out", "float32", 1000)
    cov = build_covariance(stats_config(corpus="npz", import_dir=str(directory)), 1000, "float32", None, fake_loaded(n_positions=2048), tmp_path)
    with pytest.raises(ConfigError) as err:
        cov.ensure(None, None, ["transformer.h.5.mlp.fc_out", "transformer.h.6.mlp.fc_out"])
    message = str(err.value)
    assert "stats.import_dir" in message and str(directory) in message
    assert "expected transformer.h.6.mlp.fc_out_float32_mom2_1000.npz" in message
    assert "found transformer.h.5.mlp.fc_out_float32_mom2_1000.npz" in message


def test_npz_refuses_another_sample_size_and_a_missing_directory(tmp_path):
    directory = tmp_path / "stats"
    write_published(directory, "transformer.h.5.mlp.fc_out", "float32", 1000)
    (directory / "transformer.h.5.mlp.fc_out_float32_mom2_1000.npz").rename(directory / "transformer.h.5.mlp.fc_out_float32_mom2_500.npz")
    cov = build_covariance(stats_config(corpus="npz", import_dir=str(directory)), 500, "float32", None, fake_loaded(n_positions=2048), tmp_path)
    with pytest.raises(ConfigError, match="1000 samples, not algo.mom2_n_samples=500"):
        cov.ensure(None, None, ["transformer.h.5.mlp.fc_out"])
    with pytest.raises(ConfigError, match="stats.import_dir: stats.corpus=npz needs"):
        build_covariance(stats_config(corpus="npz"), 500, "float32", None, fake_loaded(n_positions=2048), tmp_path)
    with pytest.raises(ConfigError, match="is not a directory"):
        build_covariance(stats_config(corpus="npz", import_dir=str(tmp_path / "nope")), 500, "float32", None, fake_loaded(), tmp_path)


def test_wikipedia_statistics_match_a_per_article_reference_pass(tiny_gpt2, tmp_path):
    """Articles truncated at ``n_positions``, every token counted: ``Σ kkᵀ / count`` as ``layer_stats``."""
    loaded = tiny_gpt2
    words = ["the", "of", "and", "in", "a", "to", "was", "is", "for", "on", "as", "by", "with", "he", "at", "from"]
    rows = [{"text": " ".join(words[(i * j) % len(words)] for j in range(5 + 23 * i))} for i in range(12)]
    corpus = WikipediaCorpus(8, corpora.model_context_length(loaded.model), "wikipedia", "20200501.en", loader=lambda *_: rows)
    modules = [loaded.layout.mlp_out.format(layer) for layer in (1, 2)]
    settings = CovarianceSettings(loaded.name, loaded.revision, corpus.sample_size, corpus.max_length, batch_size=3)
    cov = CovarianceCache(tmp_path, settings, corpus.build, corpus.ident())
    cov.ensure(loaded.model, loaded.tokenizer, modules)

    sums, count, seen = {m: torch.zeros(256, 256, dtype=torch.float64) for m in modules}, 0, {}
    hooks = [
        loaded.model.get_submodule(m).register_forward_hook(lambda _mod, args, _out, m=m: seen.__setitem__(m, args[0]))
        for m in modules
    ]
    try:
        for text in corpus.build().texts:
            ids = loaded.tokenizer.encode(text, truncation=True, max_length=128)
            with torch.no_grad():
                loaded.model(torch.tensor([ids]))
            for m in modules:
                feats = seen[m][0].double()
                sums[m] += feats.T @ feats
            count += len(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert max(len(loaded.tokenizer.encode(r["text"])) for r in rows) > 128  # truncation is exercised
    for m in modules:
        torch.testing.assert_close(cov.get(m).double(), sums[m] / count, rtol=1e-5, atol=1e-6)
