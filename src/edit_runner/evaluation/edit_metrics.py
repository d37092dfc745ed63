"""CounterFact and zsRE edit metrics (efficacy, generalization, specificity, Score), batched.

Every prompt of every record goes through :func:`edit_runner.models.scoring.score_targets`
in one call (pairs gathered across records, scored in length-sorted batches, scattered back).

Prompt sets: efficacy = the rewrite prompt, generalization = the paraphrase prompts,
specificity = the neighborhood prompts (with each neighbor's own target).

Two named definitions (SPEC Part B §8):

``memit`` (default; kmeng01/memit ``eval_utils_counterfact.py`` + ``summarize.py``, Part C §11.1)
    per prompt ``NLL = −(1/T) Σ_j log p(tok_j)`` for ``target_new`` and ``target_true``;
    efficacy/generalization success = ``NLL_true > NLL_new``, specificity success =
    ``NLL_true < NLL_new`` (the neighbor's target against ``target_new``); accuracy = every
    token of the correct target (new for efficacy/generalization, the neighbor's target for
    specificity) is the teacher-forced argmax; magnitude = difference of per-token geometric-mean
    probabilities (EM/PM/NM). Per-record value = mean over that record's prompts; the summary
    averages records. Score = harmonic mean of the three (0 when any of them is 0, as scipy).

``easyedit`` (RUOE / EasyEdit, Part C §9.3)
    accuracy of efficacy/generalization = teacher-forced argmax accuracy averaged over the
    target tokens (then over prompts); specificity accuracy = the post-edit argmax tokens over
    the neighbor's target positions equal the pre-edit ones (``np.array_equal``), for which the
    pre-edit call's rows (``specificity_argmax_ids``) are passed back as ``pre_predictions``;
    without them the model is compared with itself (1.0, the value for the unedited model).
    Success = mean log-prob comparison (numerically the memit rule). Score = harmonic mean after
    dropping values ≤ 0.

zsRE records (``RecordKind.zsre``, Part C §11.2): ``*_accuracy`` is the token-level
teacher-forced accuracy of ``target_new`` over rewrite / paraphrase prompts, and of each
neighbor's answer tokens (``loc_ans``) over its prompt, pooled over all tokens of the set;
``score_accuracy`` = harmonic mean of the three accuracies; magnitudes are absent. Under ``memit``
(kmeng01 ``compute_rewrite_quality_zsre``) there is no success metric. Under ``easyedit`` the
zsRE specificity accuracy is the token-averaged agreement of post-edit with pre-edit argmax
tokens, and success follows RUOE (``batch_edit_recursive`` for ``zsre`` + EasyEdit
``test_prediction_success``): efficacy / generalization success = the mean per-token log-prob of
``target_new`` exceeds that of the ground truth, which RUOE sets to the text ``<|endoftext|>``
(:data:`ZSRE_EASYEDIT_GROUND_TRUTH`); specificity success is taken per answer token, as RUOE
splits the neighbor prompt into ``loc? + answer[:i]`` prompts with the single next answer token as
ground truth: success at ``i`` = ``log p(answer_i | loc? answer_<i)`` exceeds the mean per-token
log-prob of ``target_new`` after the same prefix; a record's value is the mean over its answer
tokens; ``score_success`` = harmonic mean of the three. The neighbor prompt is used verbatim (a
zsRE loader gives ``loc + "?"``, the reference's prompt).

Portability (EasyEdit ``compute_portability_quality``, KnowEdit's "Portability"), under either
definition and only for records that have :attr:`EditRecord.portability` prompts: per prompt the
token-level teacher-forced accuracy of its answer; per record and group (``Reasoning``,
``Subject_Aliasing``, ...) the mean over the group's prompts (``portability_group_accuracy``);
``portability_accuracy`` of a record = mean over its groups. The summary follows EasyEdit's
``summary_metrics``: per group the mean over the records that have it, then the mean over groups.
It is not part of the Scores, and absent (not 0) when no record has portability prompts.

MQuAKE (:func:`evaluate_mquake`, Zhong et al. 2023 §3.3), on the model after all edits of the
cases were made: a question or cloze prompt is *answered* with an answer when every answer token
is the teacher-forced argmax (= greedy decoding starts with the answer; MEMIT's ``*_correct``), and
with a set of answers when it is answered with any of them (``new_answer`` or an alias).
Multi-hop accuracy = fraction of cases with at least one of their multi-hop questions answered;
edit-wise success = fraction of all edited facts whose rewrite prompt is answered with its new
target; instance-wise accuracy = fraction of cases (with ``new_single_hops``) whose every new
single-hop cloze prompt is answered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from edit_runner.config import MetricDefinition
from edit_runner.data.mquake import MquakeCase
from edit_runner.data.record import EditRecord, RecordKind
from edit_runner.models.scoring import TargetScore, score_targets
from edit_runner.models.tokens import target_token_ids

PROMPT_SETS: tuple[str, ...] = ("efficacy", "generalization", "specificity")
SUMMARY_KEYS: tuple[str, ...] = (
    "efficacy_success",
    "efficacy_accuracy",
    "generalization_success",
    "generalization_accuracy",
    "specificity_success",
    "specificity_accuracy",
    "score_success",
    "score_accuracy",
)
MAGNITUDE_KEYS: tuple[str, ...] = ("efficacy_magnitude", "generalization_magnitude", "specificity_magnitude")
#: RUOE's ground truth of zsRE records (EasyEdit's default ``ground_truth``), the competitor of ``target_new``.
ZSRE_EASYEDIT_GROUND_TRUTH = "<|endoftext|>"
PORTABILITY_KEY = "portability_accuracy"
PORTABILITY = "portability"


def _definition(definition: str | MetricDefinition) -> MetricDefinition:
    try:
        return MetricDefinition(definition)
    except ValueError:
        valid = ", ".join(d.value for d in MetricDefinition)
        raise ValueError(f"eval.metrics={definition!r} is not a metric definition; choose one of: {valid}") from None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def harmonic_mean(values: Sequence[float | None], definition: str | MetricDefinition = "memit") -> float | None:
    """Score of three metric values.

    ``memit``: ``scipy.stats.hmean`` semantics — 0 when any value is 0, ``None`` when any is
    missing. ``easyedit``: values ≤ 0 (and missing ones) are dropped first; 0 when none remain.
    """
    rule = _definition(definition)
    if rule is MetricDefinition.easyedit:
        kept = [v for v in values if v is not None and v > 0]
        return len(kept) / sum(1.0 / v for v in kept) if kept else 0.0
    if any(v is None for v in values) or not values:
        return None
    present = [float(v) for v in values if v is not None]
    if any(v <= 0 for v in present):
        return 0.0
    return len(present) / sum(1.0 / v for v in present)


def _normalize_pre_predictions(
    pre_predictions: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Sequence[int]]] | None,
) -> dict[str, list[list[int]]] | None:
    if pre_predictions is None:
        return None
    if isinstance(pre_predictions, Mapping):
        return {str(k): [list(map(int, ids)) for ids in v] for k, v in pre_predictions.items()}
    table: dict[str, list[list[int]]] = {}
    for row in pre_predictions:
        if "specificity_argmax_ids" not in row:
            raise ValueError(
                f"pre-edit row case_id={row.get('case_id')} has no specificity_argmax_ids; "
                "evaluate the unedited model with definition='easyedit' and pass its rows"
            )
        table[str(row["case_id"])] = [list(map(int, ids)) for ids in row["specificity_argmax_ids"]]
    return table


def _record_prompts(record: EditRecord, rule: MetricDefinition) -> dict[str, list[tuple[str, str, str]]]:
    """Per prompt set: ``(prompt, correct target, competing target)`` triples (no competitor: ``""``)."""
    if record.kind is RecordKind.zsre:
        truth = ZSRE_EASYEDIT_GROUND_TRUTH if rule is MetricDefinition.easyedit else ""
        return {
            "efficacy": [(record.rewrite_prompt, record.target_new, truth)],
            "generalization": [(p, record.target_new, truth) for p in record.paraphrase_prompts],
            "specificity": [(n.prompt, n.target, "") for n in record.neighborhood],
        }
    return {
        "efficacy": [(record.rewrite_prompt, record.target_new, record.target_true)],
        "generalization": [(p, record.target_new, record.target_true) for p in record.paraphrase_prompts],
        "specificity": [(n.prompt, n.target or record.target_true, record.target_new) for n in record.neighborhood],
    }


def _counterfact_row(
    record: EditRecord,
    scores: dict[str, list[tuple[TargetScore, TargetScore]]],
    rule: MetricDefinition,
    pre_ids: list[list[int]] | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"case_id": record.case_id, "kind": record.kind.value, "metric_definition": rule.value}
    for name in PROMPT_SETS:
        pairs = scores[name]  # (correct, competing): (new, true) or (neighbor target, new)
        if name == "specificity":
            true_scores = [c for c, _ in pairs]
            new_scores = [o for _, o in pairs]
        else:
            new_scores = [c for c, _ in pairs]
            true_scores = [o for _, o in pairs]
        nll_new = [s.mean_nll for s in new_scores]
        nll_true = [s.mean_nll for s in true_scores]
        row[f"{name}_nll_new"] = nll_new
        row[f"{name}_nll_true"] = nll_true
        if name == "specificity":
            success = [float(t < n) for n, t in zip(nll_new, nll_true)]
            magnitude = [math.exp(-t) - math.exp(-n) for n, t in zip(nll_new, nll_true)]
        else:
            success = [float(t > n) for n, t in zip(nll_new, nll_true)]
            magnitude = [math.exp(-n) - math.exp(-t) for n, t in zip(nll_new, nll_true)]
        row[f"{name}_success"] = _mean(success)
        row[f"{name}_magnitude"] = _mean(magnitude)
        correct_scores = [c for c, _ in pairs]
        if rule is MetricDefinition.memit:
            correct = [s.all_argmax for s in correct_scores]
            row[f"{name}_correct"] = correct
            row[f"{name}_accuracy"] = _mean([float(c) for c in correct])
        elif name != "specificity":
            token_acc = [s.token_accuracy for s in correct_scores]
            row[f"{name}_token_accuracy"] = token_acc
            row[f"{name}_accuracy"] = _mean(token_acc)
        else:
            post_ids = [list(s.argmax_ids) for s in correct_scores]
            reference = pre_ids if pre_ids is not None else post_ids
            matches = [p == q for p, q in zip(post_ids, reference)]
            row["specificity_argmax_ids"] = post_ids
            row["specificity_matches_pre"] = matches
            row["specificity_accuracy"] = _mean([float(m) for m in matches])
    return row


def _zsre_row(
    record: EditRecord,
    scores: dict[str, list[tuple[TargetScore, TargetScore]]],
    rule: MetricDefinition,
    pre_ids: list[list[int]] | None,
    new_after_answer_prefix: Sequence[Sequence[float]] = (),
) -> dict[str, Any]:
    row: dict[str, Any] = {"case_id": record.case_id, "kind": record.kind.value, "metric_definition": rule.value}
    if rule is MetricDefinition.easyedit:
        for name in ("efficacy", "generalization"):
            success = [float(c.mean_logprob > t.mean_logprob) for c, t in scores[name]]
            row[f"{name}_success"] = _mean(success)
        # per answer token i: log p(answer_i | loc? answer_<i) against target_new's mean log-prob there
        per_token = [
            float(answer.token_logprobs[i] > new_logprob)
            for (answer, _), new_logprobs in zip(scores["specificity"], new_after_answer_prefix)
            for i, new_logprob in enumerate(new_logprobs)
        ]
        row["specificity_success"] = _mean(per_token)
    for name in PROMPT_SETS:
        correct_scores = [c for c, _ in scores[name]]
        if name == "specificity" and rule is MetricDefinition.easyedit:
            post_ids = [list(s.argmax_ids) for s in correct_scores]
            reference = pre_ids if pre_ids is not None else post_ids
            flags = [[a == b for a, b in zip(p, q)] for p, q in zip(post_ids, reference)]
            row["specificity_argmax_ids"] = post_ids
        else:
            flags = [list(s.is_argmax) for s in correct_scores]
        row[f"{name}_token_correct"] = flags
        row[f"{name}_accuracy"] = _mean([float(f) for per_prompt in flags for f in per_prompt])
    return row


@torch.no_grad()
def evaluate_records(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    definition: str | MetricDefinition = "memit",
    batch_size: int = 64,
    pre_predictions: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Sequence[int]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per record with per-prompt values and per-record means (see the module docstring).

    ``pre_predictions`` (``easyedit`` only; ignored by ``memit``): the rows of the same call on
    the unedited model, or a mapping ``case_id -> specificity_argmax_ids``.
    """
    rule = _definition(definition)
    pre_table = _normalize_pre_predictions(pre_predictions) if rule is MetricDefinition.easyedit else None
    token_cache: dict[str, list[int]] = {}

    def ids_of(text: str) -> list[int]:
        if text not in token_cache:
            token_cache[text] = target_token_ids(tokenizer, text)
        return token_cache[text]

    prompts: list[str] = []
    targets: list[list[int]] = []
    # (record index, set name, correct pair index, competing pair index or -1)
    layout: list[tuple[int, str, int, int]] = []
    # easyedit zsRE specificity success: target_new after each answer prefix (record, neighbor, sequence index)
    answer_prefixes: list[tuple[int, int, int, int]] = []
    for r, record in enumerate(records):
        if record.kind is RecordKind.zsre and rule is MetricDefinition.easyedit:
            new_ids = ids_of(record.target_new)
            for k, neighbor in enumerate(record.neighborhood):
                answer = ids_of(neighbor.target)
                for i in range(len(answer)):
                    answer_prefixes.append((r, k, i, len(prompts)))
                    prompts.append(neighbor.prompt)
                    targets.append(answer[:i] + new_ids)
        for name, triples in _record_prompts(record, rule).items():
            for prompt, correct, competing in triples:
                correct_index, competing_index = len(prompts), -1
                prompts.append(prompt)
                targets.append(ids_of(correct))
                if competing:
                    competing_index = len(prompts)
                    prompts.append(prompt)
                    targets.append(ids_of(competing))
                layout.append((r, name, correct_index, competing_index))
        for item in record.portability:
            layout.append((r, PORTABILITY, len(prompts), -1))
            prompts.append(item.prompt)
            targets.append(ids_of(item.target))
    scored = score_targets(model, tokenizer, prompts, targets, batch_size=batch_size)

    per_record: list[dict[str, list[tuple[TargetScore, TargetScore]]]] = [
        {name: [] for name in (*PROMPT_SETS, PORTABILITY)} for _ in records
    ]
    for r, name, i, j in layout:
        per_record[r][name].append((scored[i], scored[j] if j >= 0 else scored[i]))
    new_after_prefix: list[dict[int, list[float]]] = [{} for _ in records]
    for r, k, i, index in answer_prefixes:
        tail = scored[index].token_logprobs[i:]  # target_new's tokens after the answer prefix
        new_after_prefix[r].setdefault(k, []).append(sum(tail) / len(tail))

    rows: list[dict[str, Any]] = []
    for record, scores, prefixes in zip(records, per_record, new_after_prefix):
        pre_ids = None
        if pre_table is not None:
            if record.case_id not in pre_table:
                raise ValueError(f"record case_id={record.case_id}: no pre-edit predictions were given for it")
            pre_ids = pre_table[record.case_id]
            if len(pre_ids) != len(scores["specificity"]):
                raise ValueError(
                    f"record case_id={record.case_id}: {len(pre_ids)} pre-edit neighbor predictions "
                    f"for {len(scores['specificity'])} neighborhood prompts"
                )
        if record.kind is RecordKind.zsre:
            row = _zsre_row(record, scores, rule, pre_ids, [prefixes.get(k, []) for k in range(len(record.neighborhood))])
        else:
            row = _counterfact_row(record, scores, rule, pre_ids)
        if record.portability:
            row.update(_portability_fields(record, [c for c, _ in scores[PORTABILITY]]))
        rows.append(row)
    return rows


def _portability_fields(record: EditRecord, scores: Sequence[TargetScore]) -> dict[str, Any]:
    """Per-prompt token accuracies, per-group means and their mean (see the module docstring)."""
    accuracy = [s.token_accuracy for s in scores]
    groups: dict[str, list[float]] = {}
    for item, value in zip(record.portability, accuracy):
        groups.setdefault(item.kind, []).append(value)
    group_means = {kind: sum(values) / len(values) for kind, values in groups.items()}
    return {
        "portability_token_accuracy": accuracy,
        "portability_group_accuracy": group_means,
        PORTABILITY_KEY: sum(group_means.values()) / len(group_means),
    }


def summarize_portability(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """EasyEdit's summary of portability: mean over groups of the group's mean over the records having it.

    ``None`` when no row has portability prompts.
    """
    groups: dict[str, list[float]] = {}
    for row in rows:
        for kind, value in (row.get("portability_group_accuracy") or {}).items():
            groups.setdefault(kind, []).append(float(value))
    if not groups:
        return None
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


def summarize(
    rows: Sequence[Mapping[str, Any]], definition: str | MetricDefinition | None = None
) -> dict[str, float | None]:
    """Average per-record values over records and add the Scores.

    ``definition`` defaults to the one the rows were computed with (``memit`` for no rows); a
    definition that differs from the rows' is an error.

    Keys (SPEC Part A): ``efficacy_success``, ``efficacy_accuracy``, ``generalization_success``,
    ``generalization_accuracy``, ``specificity_success``, ``specificity_accuracy``,
    ``score_success``, ``score_accuracy``, plus the magnitudes ``efficacy_magnitude``,
    ``generalization_magnitude``, ``specificity_magnitude`` (SPEC §11.1 EM/PM/NM). Success keys and
    ``score_success`` exist only when some row has a success metric (not zsRE under ``memit``),
    magnitudes only for CounterFact rows. A prompt set no record has gives ``None`` (and a ``None``
    memit Score). ``portability_accuracy`` is present only when some record has portability prompts.
    """
    if definition is None:
        definition = next((row["metric_definition"] for row in rows if "metric_definition" in row), "memit")
    rule = _definition(definition)
    for row in rows:
        if row.get("metric_definition", rule.value) != rule.value:
            raise ValueError(
                f"row case_id={row.get('case_id')} was computed with metric definition "
                f"{row.get('metric_definition')!r}, not {rule.value!r}"
            )
    has_success = any(row.get("efficacy_success") is not None for row in rows)
    has_magnitude = any(row.get("efficacy_magnitude") is not None for row in rows)
    summary: dict[str, Any] = {}

    def average(key: str) -> float | None:
        return _mean([float(row[key]) for row in rows if row.get(key) is not None])

    for name in PROMPT_SETS:
        if has_success:
            summary[f"{name}_success"] = average(f"{name}_success")
        summary[f"{name}_accuracy"] = average(f"{name}_accuracy")
    if has_success:
        summary["score_success"] = harmonic_mean([summary[f"{n}_success"] for n in PROMPT_SETS], rule)
    summary["score_accuracy"] = harmonic_mean([summary[f"{n}_accuracy"] for n in PROMPT_SETS], rule)
    if has_magnitude:
        for key in MAGNITUDE_KEYS:
            summary[key] = average(key)
    portability = summarize_portability(rows)
    if portability is not None:
        summary[PORTABILITY_KEY] = portability
    ordered = [k for k in (*SUMMARY_KEYS, PORTABILITY_KEY, *MAGNITUDE_KEYS) if k in summary]
    return {k: summary[k] for k in ordered}


def _answered_any(scores: Sequence[TargetScore]) -> bool:
    return any(s.all_argmax for s in scores)


@torch.no_grad()
def evaluate_mquake(
    model: torch.nn.Module,
    tokenizer,
    cases: Sequence[MquakeCase],
    batch_size: int = 64,
    question_template: str = "{}",
) -> list[dict[str, Any]]:
    """One row per MQuAKE case on the model as it is (after the cases' edits; module docstring).

    ``question_template`` wraps every multi-hop question (one ``{}``), e.g. a few-shot prefix
    ending in ``"Q: {} A:"``. Every (prompt, answer) pair goes through one scorer call. Row keys:
    ``question_answered`` (per question), ``multi_hop_correct``, ``edits_recalled`` (per rewrite),
    ``single_hops_answered`` (per new single hop) and ``instance_correct`` (``None`` without single hops).
    """
    if question_template.count("{}") != 1:
        raise ValueError(f"question_template={question_template!r} must contain exactly one '{{}}' for the question")
    prompts: list[str] = []
    targets: list[list[int]] = []
    # (case index, part, item index) per scored pair
    owners: list[tuple[int, str, int]] = []

    def add(c: int, part: str, item: int, prompt: str, answers: Sequence[str]) -> None:
        for answer in answers:
            owners.append((c, part, item))
            prompts.append(prompt)
            targets.append(target_token_ids(tokenizer, answer))

    for c, case in enumerate(cases):
        for q, question in enumerate(case.questions):
            add(c, "question", q, question_template.format(question), case.new_answers)
        for k, record in enumerate(case.records):
            add(c, "edit", k, record.rewrite_prompt, [record.target_new])
        for h, hop in enumerate(case.new_single_hops):
            add(c, "hop", h, hop.cloze, hop.answers)
    scored = score_targets(model, tokenizer, prompts, targets, batch_size=batch_size)
    grouped: dict[tuple[int, str, int], list[TargetScore]] = {}
    for owner, score in zip(owners, scored):
        grouped.setdefault(owner, []).append(score)

    rows: list[dict[str, Any]] = []
    for c, case in enumerate(cases):
        answered = [_answered_any(grouped[(c, "question", q)]) for q in range(len(case.questions))]
        recalled = [_answered_any(grouped[(c, "edit", k)]) for k in range(len(case.records))]
        hops = [_answered_any(grouped[(c, "hop", h)]) for h in range(len(case.new_single_hops))]
        rows.append(
            {
                "case_id": case.case_id,
                "question_answered": answered,
                "multi_hop_correct": any(answered),
                "edits_recalled": recalled,
                "single_hops_answered": hops,
                "instance_correct": all(hops) if hops else None,
            }
        )
    return rows


def summarize_mquake(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``multi_hop_accuracy`` (over cases), ``edit_wise_success`` (over all edited facts) and
    ``instance_wise_accuracy`` (over cases with single hops); ``None`` where nothing was measured."""
    edits = [float(flag) for row in rows for flag in row["edits_recalled"]]
    instances = [float(row["instance_correct"]) for row in rows if row.get("instance_correct") is not None]
    return {
        "multi_hop_accuracy": _mean([float(row["multi_hop_correct"]) for row in rows]),
        "edit_wise_success": _mean(edits),
        "instance_wise_accuracy": _mean(instances),
    }
