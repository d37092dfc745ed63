"""Model-health trackers for long sequential runs (issue 5): norm growth, forgetting, fluency, schedule, alarms.

Everything here is a pure function or a tiny frozen dataclass; the runner owns the state (the
original weights, the first-evaluation outcomes, the series rows) and checkpoints it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import torch

# --------------------------------------------------------------------------------------------------
# (a) Norm growth of edited matrices (seeds 003, 004)
# --------------------------------------------------------------------------------------------------


def layer_norm_stats(
    current: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Per weight name: ``fro`` = ‖W‖_F, ``l1`` = Σ|W|, ``delta_fro`` = ‖W − W₀‖_F,
    ``normalized_distance`` = ‖W − W₀‖_F / numel(W) (seed 002 Fig. 2d and Table 2: the authors'
    ``evaluate_glue.py:get_model_distance`` divides ``torch.norm`` of the difference, the Frobenius
    norm of the flattened matrix, by its number of elements) and ``relative_distance`` =
    ‖W − W₀‖_F / ‖W₀‖_F (``inf`` when W₀ = 0 ≠ W, 0 when both are 0).

    ``current`` and ``original`` map the same names (e.g. ``"model.layers.4.mlp.down_proj.weight"``)
    to same-shaped tensors; computed in float64 on the tensors' device, returned as Python floats.
    """
    stats: dict[str, dict[str, float]] = {}
    for name, weight in current.items():
        if name not in original:
            raise KeyError(
                f"no original weight for {name!r}; snapshot W0 of every tracked matrix before editing"
            )
        base = original[name]
        if tuple(base.shape) != tuple(weight.shape):
            raise ValueError(
                f"{name}: current shape {tuple(weight.shape)} != original shape {tuple(base.shape)}"
            )
        w = weight.detach().to(torch.float64)
        w0 = base.detach().to(device=w.device, dtype=torch.float64)
        fro = torch.linalg.vector_norm(w).item()
        delta = torch.linalg.vector_norm(w - w0).item()
        base_fro = torch.linalg.vector_norm(w0).item()
        if base_fro > 0:
            relative = delta / base_fro
        else:
            relative = math.inf if delta > 0 else 0.0
        stats[name] = {
            "fro": fro,
            "l1": w.abs().sum().item(),
            "delta_fro": delta,
            "normalized_distance": delta / max(1, w.numel()),
            "relative_distance": relative,
        }
    return stats


# --------------------------------------------------------------------------------------------------
# (b) Forgetting of earlier edits (seed 002 §3.2, seed 003 §4.1)
# --------------------------------------------------------------------------------------------------


def forgetting_stats(
    first_eval: Mapping[Hashable, bool], current_eval: Mapping[Hashable, bool], forgotten_before: AbstractSet[Hashable] = frozenset()
) -> dict[str, Any]:
    """Forgetting of earlier edits at one evaluation point, counted cumulatively (seed 002 Fig. 3,
    the authors' ``downstream_eval/fact_forgetting.py``).

    ``first_eval[case_id]`` is whether the edit succeeded (argmax-correct) right after its own step;
    ``current_eval`` the outcome of the same edit at this (later) re-evaluation; ``forgotten_before``
    the edits already counted as forgotten at an earlier point. An edit is forgotten from the first
    re-evaluation at which it fails after it first succeeded, and stays forgotten even if a later
    re-evaluation finds it correct again. With ``S`` = the first-successful edits among
    ``first_eval`` (``num_first_successful``) and ``F`` = those forgotten so far (``num_forgotten``):
    ``forgotten`` = |F| / |S| (the paper's "% facts forgotten", over correct edits; NaN for S = ∅),
    ``retained`` = 1 − ``forgotten``. ``currently_failing`` = share of the re-evaluated
    first-successful edits failing now (the non-cumulative rate; NaN when none is re-evaluated).
    ``forgotten_ids`` is the updated set F, to pass as ``forgotten_before`` next time.
    """
    first_ok = [case for case, ok in first_eval.items() if ok]
    evaluated = [case for case in first_ok if case in current_eval]
    failing = [case for case in evaluated if not current_eval[case]]
    forgotten_ids = set(forgotten_before) | set(failing)
    forgotten_ids &= set(first_ok)
    n_ok, n_eval = len(first_ok), len(evaluated)
    forgotten = len(forgotten_ids) / n_ok if n_ok else math.nan
    return {
        "forgotten": forgotten,
        "retained": 1.0 - forgotten if n_ok else math.nan,
        "currently_failing": len(failing) / n_eval if n_eval else math.nan,
        "num_evaluated": float(n_eval),
        "num_first_successful": float(n_ok),
        "num_forgotten": float(len(forgotten_ids)),
        "forgotten_ids": forgotten_ids,
    }


# --------------------------------------------------------------------------------------------------
# (c) Fluency: n-gram entropy (SPEC C §11.1)
# --------------------------------------------------------------------------------------------------

_CONTRACTIONS = re.compile(r"(?i)(\w)('s|'m|'d|'ll|'re|'ve|n't)\b")
_PUNCT = re.compile(r"([?!;@#$%&()\[\]{}<>]|\.\.\.|--)")
_COMMA_COLON = re.compile(r"([,:])(?!\d)")


def word_tokenize(text: str) -> list[str]:
    """A small approximation of ``nltk.word_tokenize`` (Penn Treebank rules), as nltk is not a dependency.

    Implemented: ``"`` becomes ``` `` ``` when it opens a quote and ``''`` otherwise; ``? ! ; @ # $ %
    & ( ) [ ] { } < >``, ``...`` and ``--`` are split off; ``,`` and ``:`` are split unless followed by
    a digit (``1,000``, ``10:30`` stay whole); the clitics ``'s 'm 'd 'll 're 've n't`` are split
    from their word; a ``.`` is split off a word that ends a sentence (followed by whitespace and an
    upper-case letter, or at the end of the text) unless the word already contains a period
    (``U.S.``). Not implemented: nltk's abbreviation list (``Mr.`` before a capitalised word is split
    here), Punkt's learned sentence boundaries, and rarer Treebank rules. The n-gram entropy only
    counts token identities, so the differences are small on ordinary generations.
    """
    text = re.sub(r'^"', " `` ", text)
    text = re.sub(r'([\s(\[{<])"', r"\1 `` ", text)
    text = text.replace('"', " '' ")
    text = _PUNCT.sub(r" \1 ", text)
    text = _COMMA_COLON.sub(r" \1 ", text)
    text = _CONTRACTIONS.sub(r"\1 \2", text)
    words = text.split()
    tokens: list[str] = []
    for i, word in enumerate(words):
        sentence_end = i == len(words) - 1 or words[i + 1][:1].isupper() or not words[i + 1][:1].isalnum()
        if len(word) > 1 and word.endswith(".") and word != "..." and "." not in word[:-1] and sentence_end:
            tokens.extend([word[:-1], "."])
        else:
            tokens.append(word)
    return tokens


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in counts.values())


def text_ngram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """``mean_n(weight_n · H_n)`` for one text, ``H_n = −Σ f log₂ f`` over relative n-gram frequencies
    of :func:`word_tokenize` tokens (a text with no n-grams of some n contributes ``H_n = 0``)."""
    tokens = word_tokenize(text)
    values = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        values.append(weight * _entropy_bits(grams))
    return sum(values) / len(values)


def ngram_entropy(texts: Iterable[str]) -> float:
    """Fluency of generations (kmeng01 ``n_gram_entropy``): mean over texts of
    ``mean([2/3 · H₂, 4/3 · H₃])``; NaN for no texts."""
    values = [text_ngram_entropy(t) for t in texts]
    return sum(values) / len(values) if values else math.nan


# --------------------------------------------------------------------------------------------------
# (d) Evaluation schedule, (e) collapse alarm
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When the trackers run: every time a multiple of ``every_n_edits`` is reached or crossed, and
    when ``total_edits`` (the end of the run) is reached. ``every_n_edits <= 0`` fires only at the end."""

    every_n_edits: int
    total_edits: int | None = None

    def fires(self, num_edits_done: int, previous_num_edits_done: int) -> bool:
        """Whether the step that took the run from ``previous_num_edits_done`` to ``num_edits_done``
        edits (a batch may add several) reaches a multiple of ``every_n_edits`` or the end."""
        if num_edits_done < previous_num_edits_done:
            raise ValueError(f"edits went backwards: {previous_num_edits_done} -> {num_edits_done}")
        if num_edits_done == previous_num_edits_done:
            return False
        if (
            self.every_n_edits > 0
            and num_edits_done // self.every_n_edits > previous_num_edits_done // self.every_n_edits
        ):
            return True
        return self.total_edits is not None and previous_num_edits_done < self.total_edits <= num_edits_done


def perplexity_alarm(value: float, baseline: float, factor: float) -> bool:
    """True when a perplexity exceeds ``factor`` × the unedited ``baseline`` (or is NaN/inf: collapsed)."""
    if not baseline > 0 or not math.isfinite(baseline):
        raise ValueError(f"baseline perplexity must be positive and finite, got {baseline}")
    if not factor > 0:
        raise ValueError(f"alarm factor must be positive, got {factor}")
    if not math.isfinite(value):
        return True
    return value > factor * baseline


# --------------------------------------------------------------------------------------------------
# (f) Catastrophic-forgetting point (seed 002 §3.2, Table 3 "CF")
# --------------------------------------------------------------------------------------------------

#: A downstream collapse: the mean F1 over the tracked tasks falls to this share of the unedited one or below.
COLLAPSE_F1_FRACTION = 0.5

CATASTROPHIC_FORGETTING_RULE = (
    "first scheduled evaluation point (edits done) at which the mean downstream F1 over the tracked tasks is "
    f"<= {COLLAPSE_F1_FRACTION} x its unedited value AND the ME-PPL exceeds alarm_factor x its unedited value "
    "(or is not finite); with only one of the two series tracked, that one alone; null when never reached"
)


def mean_downstream_f1(point: Mapping[str, Any]) -> float | None:
    """Mean over a tracker point's downstream tasks of the generation F1 (the probability F1 where no
    generation was scored); None when the point has no downstream results."""
    tasks = point.get("downstream") or {}
    values = [m.get("gen_f1", m.get("prob_f1")) for m in tasks.values()]
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def catastrophic_forgetting_point(
    initial: Mapping[str, Any], points: Sequence[Mapping[str, Any]], ppl_factor: float
) -> int | None:
    """The edit count at which the model collapses (:data:`CATASTROPHIC_FORGETTING_RULE`).

    The paper gives no formula: it reads the point off Figures 1–3 as the inflection after which
    downstream performance is lost and the model "is almost unusable". Here a point collapses when
    its mean downstream F1 (:func:`mean_downstream_f1`) is at most :data:`COLLAPSE_F1_FRACTION` of
    the unedited point's and its perplexity is above ``ppl_factor`` × the unedited perplexity (a
    non-finite perplexity counts as collapsed). ``initial`` is the tracker point before editing,
    ``points`` the later ones in order, each with ``num_edits``.
    """
    f1_0 = mean_downstream_f1(initial)
    ppl_0 = initial.get("perplexity")
    if f1_0 is None and ppl_0 is None:
        return None
    for point in points:
        checks = []
        f1 = mean_downstream_f1(point)
        if f1_0 is not None and f1 is not None:
            checks.append(f1 <= COLLAPSE_F1_FRACTION * f1_0)
        if ppl_0 is not None and point.get("perplexity") is not None:
            checks.append(perplexity_alarm(float(point["perplexity"]), float(ppl_0), ppl_factor))
        if checks and all(checks):
            return int(point["num_edits"])
    return None
