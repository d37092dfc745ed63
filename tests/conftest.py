"""Shared fixtures: the ../shared data directory, small real models and a random tiny GPT-2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    """The reference-data directory: ``$EDIT_RUNNER_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("EDIT_RUNNER_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared``; tests that need it fail (not skip) when it is missing."""
    path = shared_path()
    assert (path / "data").is_dir(), f"reference data not found at {path}; set EDIT_RUNNER_SHARED"
    return path


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, dequantized once into the cache and loaded once per test session.

    Tests must restore any weights they modify (use :func:`restore_weights`).
    """
    from edit_runner.models.loading import load_model

    return load_model(source="smollm2", name="smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def stories260k(shared_dir: Path):
    """karpathy's stories260K (Llama architecture) from ``../shared/models``."""
    from edit_runner.models.loading import load_model

    return load_model(str(shared_dir / "models" / "stories260K"), name="stories260K", device="cpu")


@pytest.fixture()
def tiny_gpt2(shared_dir: Path):
    """A randomly initialised 4-layer GPT-2 with the real GPT-2 BPE tokenizer (fresh per test)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from edit_runner.models.layout import layout_for
    from edit_runner.models.loading import LoadedModel
    from edit_runner.models.tokens import ensure_pad_token

    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_dir / "models" / "gpt2-tokenizer"))
    ensure_pad_token(tokenizer)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tokenizer))
    model = GPT2LMHeadModel(config).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, layout=layout_for("gpt2"), name="tiny-gpt2", revision="random")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls are badly slowed by OMP oversubscription on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cov_dir(tmp_path_factory) -> Path:
    """A module-wide covariance cache directory."""
    return tmp_path_factory.mktemp("covariance")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A module-wide ``cache_dir`` for in-process jobs (covariance statistics, dequantised models)."""
    return tmp_path_factory.mktemp("er_cache")


@pytest.fixture(scope="module")
def data_file(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """The requesting test module's ``RECORDS`` written as a ``data=custom`` JSON file."""
    path = tmp_path_factory.mktemp("data") / "edits.json"
    path.write_text(json.dumps(request.module.RECORDS))
    return path


@pytest.fixture(scope="module")
def hydra_context():
    """Hydra initialised on the packaged config tree, as the installed ``edit-run`` sees it (schemas first)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from edit_runner.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()
