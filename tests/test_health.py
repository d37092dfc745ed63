"""Model-health trackers: norm growth, forgetting, n-gram entropy, schedule, collapse alarm."""

from __future__ import annotations

import math

import pytest
import torch

from edit_runner.evaluation.health import (
    Schedule,
    forgetting_stats,
    layer_norm_stats,
    ngram_entropy,
    perplexity_alarm,
    text_ngram_entropy,
    word_tokenize,
)


def test_norm_stats_after_rank_one_update():
    torch.manual_seed(0)
    w0 = torch.randn(6, 4)
    u, v = torch.randn(6), torch.randn(4)
    w = w0 + torch.outer(u, v)
    untouched = torch.randn(3, 3)
    stats = layer_norm_stats({"l1.w": w, "l2.w": untouched}, {"l1.w": w0.clone(), "l2.w": untouched.clone()})
    s = stats["l1.w"]
    assert s["fro"] == pytest.approx(math.sqrt(float((w.double() ** 2).sum())), rel=1e-12)
    assert s["l1"] == pytest.approx(float(w.double().abs().sum()), rel=1e-12)
    # ‖u vᵀ‖_F = ‖u‖ ‖v‖ for a rank-one update
    assert s["delta_fro"] == pytest.approx(float(u.double().norm() * v.double().norm()), rel=1e-6)
    assert s["relative_distance"] == pytest.approx(s["delta_fro"] / float(w0.double().norm()), rel=1e-12)
    assert s["normalized_distance"] == pytest.approx(s["delta_fro"] / w0.numel(), rel=1e-12)  # seed 002
    assert stats["l2.w"]["delta_fro"] == 0.0 and stats["l2.w"]["normalized_distance"] == 0.0
    with pytest.raises(KeyError):
        layer_norm_stats({"x": w}, {})
    with pytest.raises(ValueError):
        layer_norm_stats({"x": w}, {"x": w0.T})


def test_forgetting_constructed_case():
    # edit A succeeded right after its step; a later edit overwrote it, so A now fails
    first = {"A": True}
    assert forgetting_stats(first, {"A": False}) == {
        "retained": 0.0,
        "forgotten": 1.0,
        "currently_failing": 1.0,
        "num_evaluated": 1.0,
        "num_first_successful": 1.0,
        "num_forgotten": 1.0,
        "forgotten_ids": {"A"},
    }
    # B never succeeded (not counted), C retained, D not re-evaluated (still in the denominator, seed 002)
    first = {"A": True, "B": False, "C": True, "D": True}
    stats = forgetting_stats(first, {"A": False, "B": True, "C": True})
    assert stats["forgotten"] == pytest.approx(1 / 3) and stats["currently_failing"] == 0.5
    assert stats["num_evaluated"] == 2 and stats["num_first_successful"] == 3
    empty = forgetting_stats({"B": False}, {"B": True})
    assert math.isnan(empty["retained"]) and empty["num_evaluated"] == 0


def test_ngram_entropy_hand_computed():
    # tokens: the cat the cat the dog
    # bigrams (5): (the,cat)x2 (cat,the)x2 (the,dog)x1 -> H2 = -(2*.4*log2 .4 + .2*log2 .2)
    # trigrams (4): (the,cat,the)x2 (cat,the,cat)x1 (cat,the,dog)x1 -> H3 = 1.5
    h2 = -(2 * 0.4 * math.log2(0.4) + 0.2 * math.log2(0.2))
    expected = (2 / 3 * h2 + 4 / 3 * 1.5) / 2
    assert text_ngram_entropy("the cat the cat the dog") == pytest.approx(expected)
    # two texts: mean of the per-text values; a 1-word text has no n-grams -> 0
    assert ngram_entropy(["the cat the cat the dog", "hello"]) == pytest.approx(expected / 2)
    # repetition (a collapsed model) lowers the entropy
    assert text_ngram_entropy("a a a a a a a a") == 0.0
    assert math.isnan(ngram_entropy([]))


def test_word_tokenize_approximates_nltk():
    assert word_tokenize("Hello, world! It's fine.") == ["Hello", ",", "world", "!", "It", "'s", "fine", "."]
    assert word_tokenize("I can't pay $1,000 at 10:30. The U.S. agreed.") == [
        "I",
        "ca",
        "n't",
        "pay",
        "$",
        "1,000",
        "at",
        "10:30",
        ".",
        "The",
        "U.S.",
        "agreed",
        ".",
    ]
    assert word_tokenize('He said "no" (twice)') == ["He", "said", "``", "no", "''", "(", "twice", ")"]


def test_schedule_fires_at_multiples_and_end():
    schedule = Schedule(every_n_edits=5, total_edits=12)
    assert [n for n in range(1, 13) if schedule.fires(n, n - 1)] == [5, 10, 12]
    # batches of 4 edits: 4, 8 (crosses 5), 12 (crosses 10 and ends)
    assert [n for n in (4, 8, 12) if schedule.fires(n, n - 4)] == [8, 12]
    assert not schedule.fires(3, 3)
    assert Schedule(every_n_edits=0, total_edits=7).fires(7, 6)
    assert not Schedule(every_n_edits=0).fires(7, 6)
    with pytest.raises(ValueError):
        schedule.fires(2, 3)


def test_perplexity_alarm():
    assert not perplexity_alarm(19.9, 10.0, 2.0)
    assert perplexity_alarm(20.1, 10.0, 2.0)
    assert perplexity_alarm(float("nan"), 10.0, 2.0)
    assert perplexity_alarm(float("inf"), 10.0, 2.0)
    with pytest.raises(ValueError):
        perplexity_alarm(1.0, 0.0, 2.0)
