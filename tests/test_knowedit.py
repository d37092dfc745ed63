"""KnowEdit loader (hand-written rows in the published schema) and the portability metric."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edit_runner.data.download import file_sha256
from edit_runner.data.knowedit import parse_knowedit
from edit_runner.data.loaders import ZSRE_TARGET_TRUE, load_dataset, parse_records
from edit_runner.data.record import EditRecord, NeighborPrompt, PortabilityPrompt, RecordKind
from edit_runner.errors import DataError
from edit_runner.evaluation.edit_metrics import evaluate_records, summarize, summarize_portability
from edit_runner.models.tokens import target_token_ids

#: A WikiData_counterfact row (string answers), a WikiData_recent row (alias lists, no ground truth)
#: and a ZsRE row (list answers, rephrase_prompt), as in the KnowEdit files.
ROWS = [
    {
        "subject": "Frederic Piesch",
        "prompt": "The name of the position held by Frederic Piesch is",
        "target_new": "Archbishop of Leon",
        "ground_truth": "mayor of Vienna",
        "portability": {
            "Subject_Aliasing": [
                {"prompt": "The name of the position held by Frederic of Pieschen is", "ground_truth": "Archbishop of Leon"}
            ]
        },
        "locality": {
            "Relation_Specificity": [{"prompt": "The gender of Frederic Piesch is", "ground_truth": "male"}],
            "Forgetfulness": [
                {"prompt": "The position held by Frederic Piesch, which is not Archbishop, is", "ground_truth": "mayor"}
            ],
        },
    },
    {
        "subject": "Leo Arons",
        "prompt": "The place of death of Leo Arons is",
        "target_new": "Berlin",
        "portability": {
            "Logical_Generalization": [
                {"prompt": "Is Leo Arons still alive?", "ground_truth": [["no"], ["incorrect"], ["false"]]}
            ],
            "Reasoning": [
                {
                    "prompt": "The continent which the place of death of Leo Arons is part of is",
                    "ground_truth": [["Europe", "European continent"]],
                },
                {"prompt": "The head of government of the place of death of Leo Arons is", "ground_truth": [["Kai Wegner"]]},
            ],
            "Subject_Aliasing": [
                {"prompt": "The place of death of Martin Leo Arons is", "ground_truth": [["Berlin", "DE-BE"]]}
            ],
        },
        "locality": {
            "Relation_Specificity": [{"prompt": "The father of Leo Arons is", "ground_truth": [["Albert Arons"]]}]
        },
    },
    {
        "subject": "Epaspidoceras",
        "target_new": "Noctuidae",
        "prompt": "Which family does Epaspidoceras belong to?",
        "ground_truth": ["Aspidoceratidae"],
        "rephrase_prompt": "What family are Epaspidoceras?",
        "locality": {"Relation_Specificity": [{"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]}]},
        "portability": {
            "Reasoning": [{"prompt": "The common name for the family Epaspidoceras belongs to is", "ground_truth": "Owlet moths"}]
        },
    },
]


def test_knowedit_field_mapping() -> None:
    cf, recent, zsre = parse_knowedit(ROWS, "knowedit.json")
    assert cf == EditRecord(
        case_id="0",
        subject="Frederic Piesch",
        prompt="The name of the position held by {} is",
        target_new="Archbishop of Leon",
        target_true="mayor of Vienna",
        kind=RecordKind.counterfact,
        neighborhood=(
            NeighborPrompt("The gender of Frederic Piesch is", "male"),
            NeighborPrompt("The position held by Frederic Piesch, which is not Archbishop, is", "mayor"),
        ),
        portability=(
            PortabilityPrompt(
                "The name of the position held by Frederic of Pieschen is", "Archbishop of Leon", "Subject_Aliasing"
            ),
        ),
    )
    # no ground truth (knowledge insertion): a zsRE-kind record; the first alias of the first answer
    assert (recent.kind, recent.target_true) == (RecordKind.zsre, ZSRE_TARGET_TRUE)
    assert [(p.kind, p.target) for p in recent.portability] == [
        ("Logical_Generalization", "no"),
        ("Reasoning", "Europe"),
        ("Reasoning", "Kai Wegner"),
        ("Subject_Aliasing", "Berlin"),
    ]
    assert recent.neighborhood == (NeighborPrompt("The father of Leo Arons is", "Albert Arons"),)
    assert (zsre.prompt, zsre.target_true, zsre.paraphrase_prompts) == (
        "Which family does {} belong to?",
        "Aspidoceratidae",
        ("What family are Epaspidoceras?",),
    )
    assert parse_records("knowedit", ROWS) == [cf, recent, zsre]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("target_new"), "'target_new' is missing"),
        (lambda r: r.update(prompt="The position of somebody is"), "does not contain the subject"),
        (lambda r: r["portability"].update(Subject_Aliasing=[{"prompt": "x"}]), "portability.Subject_Aliasing[0].ground_truth"),
        (lambda r: r["portability"].update(Reasoning=[{"prompt": "x", "ground_truth": [[]]}]), "ground_truth[0]' is an empty list"),
        (lambda r: r["locality"].update(Relation_Specificity="The gender is"), "locality.Relation_Specificity"),
        (lambda r: r.update(ground_truth="Archbishop of Leon"), "equals ground_truth"),
    ],
)
def test_knowedit_bad_records_name_the_record_and_field(change, field: str) -> None:
    rows = json.loads(json.dumps(ROWS))
    change(rows[0])
    with pytest.raises(DataError, match="case_id=0") as err:
        parse_knowedit(rows, "knowedit.json")
    assert field in str(err.value) and "knowedit.json: record 0" in str(err.value)


def test_knowedit_wikibio_rows_are_rejected_with_a_reason() -> None:
    with pytest.raises(DataError, match="WikiBio"):
        parse_knowedit([{"text": "a", "labels": "b", "concept": "c"}])


def test_knowedit_download_is_verified_by_sha256(tmp_path: Path) -> None:
    source = tmp_path / "test_cf.json"
    source.write_text(json.dumps(ROWS))
    cfg = SimpleNamespace(name="knowedit", format="knowedit", url=source.as_uri(), sha256=file_sha256(source), num_edits=None)
    records = load_dataset(cfg, cache_dir=tmp_path / "cache")
    assert [r.subject for r in records] == ["Frederic Piesch", "Leo Arons", "Epaspidoceras"]
    assert (tmp_path / "cache" / "data" / "test_cf.json").is_file()
    bad = SimpleNamespace(**{**cfg.__dict__, "sha256": "0" * 64})
    with pytest.raises(DataError, match="expected 0000"):
        load_dataset(bad, cache_dir=tmp_path / "other")


# -------------------------------------------------------------------------------------- portability


def _token_accuracy_slow(model, tokenizer, prompt: str, target: str) -> float:
    """Teacher-forced argmax accuracy of ``target`` from one unbatched forward pass."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = target_token_ids(tokenizer, target)
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = model(ids).logits[0]
    predicted = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(target_ids)].argmax(-1).tolist()
    return sum(p == t for p, t in zip(predicted, target_ids)) / len(target_ids)


def test_portability_accuracy_matches_a_slow_computation(tiny_gpt2, one_thread) -> None:
    model, tokenizer = tiny_gpt2.model, tiny_gpt2.tokenizer
    records = parse_knowedit(ROWS)
    # make some answers the model's own greedy tokens, so accuracies are not all 0
    recent = records[1]
    prompt = recent.portability[1].prompt
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        greedy = int(model(ids).logits[0, -1].argmax())
    guessed = PortabilityPrompt(prompt, tokenizer.decode([greedy]).strip() + " Wegner", "Reasoning")
    records[1] = replace(recent, portability=(recent.portability[0], guessed, *recent.portability[2:]))
    rows = evaluate_records(model, tokenizer, records, "easyedit")
    for record, row in zip(records, rows):
        expected = [_token_accuracy_slow(model, tokenizer, p.prompt, p.target) for p in record.portability]
        assert row["portability_token_accuracy"] == pytest.approx(expected)
        groups: dict[str, list[float]] = {}
        for p, value in zip(record.portability, expected):
            groups.setdefault(p.kind, []).append(value)
        means = {k: sum(v) / len(v) for k, v in groups.items()}
        assert row["portability_group_accuracy"] == pytest.approx(means)
        assert row["portability_accuracy"] == pytest.approx(sum(means.values()) / len(means))
    assert rows[1]["portability_group_accuracy"]["Reasoning"] > 0
    summary = summarize(rows)
    assert summary["portability_accuracy"] == pytest.approx(summarize_portability(rows))
    assert "portability_accuracy" in summarize(evaluate_records(model, tokenizer, records, "memit"))


def test_portability_summary_averages_groups_first_and_is_absent_without_data(tiny_gpt2, one_thread) -> None:
    rows = [
        {"case_id": "a", "portability_group_accuracy": {"Reasoning": 0.5, "Subject_Aliasing": 1.0}},
        {"case_id": "b", "portability_group_accuracy": {"Reasoning": 0.0}},
        {"case_id": "c"},
    ]
    # Reasoning: (0.5 + 0.0) / 2 = 0.25; Subject_Aliasing: 1.0; portability = (0.25 + 1.0) / 2
    assert summarize_portability(rows) == pytest.approx(0.625)
    assert summarize_portability([{"case_id": "c"}]) is None
    plain = [EditRecord("p", "Paris", "{} is the capital of", "Italy", "France")]
    summary = summarize(evaluate_records(tiny_gpt2.model, tiny_gpt2.tokenizer, plain, "easyedit"))
    assert "portability_accuracy" not in summary
