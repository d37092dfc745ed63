"""MQuAKE loader (hand-written cases in the published schema) and the multi-hop metrics.

The metrics run on a word-level fake language model whose next word depends only on the current
word (a successor table), so whether a prompt is "answered" is known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edit_runner.data.loaders import load_records
from edit_runner.data.mquake import MULTI_HOP, SingleHop, load_mquake_cases, parse_mquake_cases
from edit_runner.data.record import PortabilityPrompt, RecordKind
from edit_runner.errors import DataError
from edit_runner.evaluation.edit_metrics import evaluate_mquake, evaluate_records, summarize, summarize_mquake


def _rewrite(subject: str, prompt: str, new: str, true: str, question: str) -> dict:
    return {
        "prompt": prompt,
        "relation_id": "P27",
        "target_new": {"str": new, "id": "Q1"},
        "target_true": {"str": true, "id": "Q2"},
        "subject": subject,
        "question": question,
    }


CASES = [
    {
        "case_id": 2500,
        "requested_rewrite": [
            _rewrite("Vince", "{} is a citizen of", "Libya", "USA", "What is the country of Vince?"),
            _rewrite("Libya", "The capital of {} is", "Franklin", "Tripoli", "What is the capital of Libya?"),
        ],
        "questions": ["capital of the country of the boss of Triple", "city of the land of the chief of Triple"],
        "answer": "Washington",
        "answer_alias": ["Washington DC"],
        "new_answer": "Franklin",
        "new_answer_alias": ["Franklin Kentucky", "Franklin"],
        "new_single_hops": [
            {"question": "Who employs Triple?", "cloze": "Triple is employed by", "answer": "WWE", "answer_alias": []},
            {"question": "?", "cloze": "The boss of WWE is", "answer": "Vince", "answer_alias": ["McMahon"]},
        ],
    },
    {
        "case_id": 7,
        "requested_rewrite": [_rewrite("Anna", "{} speaks", "Welsh", "Dutch", "What does Anna speak?")],
        "questions": ["the tongue of the mother of Bob"],
        "new_answer": "Welsh",
        "new_single_hops": [{"question": "?", "cloze": "Bob 's mother speaks", "answer": "Welsh"}],
    },
]

#: The fake model's next word after each word (everything else is followed by "<unk>").
SUCCESSOR = {
    "of": "Libya",  # "... is a citizen of" -> Libya (edit recalled); "... capital of" -> Libya
    "Triple": "Franklin",  # question 1 of case 2500 ends in "Triple": Franklin then Kentucky
    "Franklin": "Kentucky",
    "by": "WWE",  # single hop 1 answered
    "is": "Tripoli",  # "The capital of Libya is" -> Tripoli: edit 2 not recalled; "The boss of WWE is" -> no
    "speaks": "Welsh",  # "Anna speaks" -> Welsh (edit recalled), "Bob 's mother speaks" -> Welsh
    "Bob": "Dutch",  # the multi-hop question of case 7 is not answered
}


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary (id 0 = ``<unk>``, also the pad token)."""

    bos_token_id = None
    unk_token_id = None
    eos_token_id = None
    pad_token_id = 0

    def __init__(self, words: list[str]) -> None:
        self.vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}

    def encode_one(self, text: str) -> list[int]:
        return [self.vocab.get(w, 0) for w in text.split()]

    def __call__(self, text, add_special_tokens: bool = True):
        if isinstance(text, list):
            return {"input_ids": [self.encode_one(t) for t in text]}
        return {"input_ids": self.encode_one(text)}


class SuccessorLM(torch.nn.Module):
    """Logits one-hot (×10) on the successor of the current token: a first-order word chain."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        super().__init__()
        size = len(tokenizer.vocab)
        table = torch.zeros(size, size)
        for word, next_word in SUCCESSOR.items():
            table[tokenizer.vocab[word], tokenizer.vocab[next_word]] = 10.0
        table[[i for i in range(size) if table[i].max() == 0], 0] = 10.0
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def _fake() -> tuple[SuccessorLM, WordTokenizer]:
    text = json.dumps(CASES) + " " + " ".join(f"{k} {v}" for k, v in SUCCESSOR.items())
    words = "".join(c if c.isalnum() or c in "'<>" else " " for c in text).split()
    tokenizer = WordTokenizer(words)
    return SuccessorLM(tokenizer).eval(), tokenizer


def test_mquake_case_mapping(tmp_path: Path) -> None:
    path = tmp_path / "MQuAKE-CF-3k.json"
    path.write_text(json.dumps(CASES))
    first, second = load_mquake_cases(path)
    assert first.case_id == "2500" and [r.case_id for r in first.records] == ["2500:0", "2500:1"]
    vince, libya = first.records
    assert (vince.prompt, vince.subject, vince.target_new, vince.target_true, vince.kind) == (
        "{} is a citizen of",
        "Vince",
        "Libya",
        "USA",
        RecordKind.counterfact,
    )
    assert vince.paraphrase_prompts == ("What is the country of Vince?",)
    assert first.new_answers == ("Franklin", "Franklin Kentucky")  # duplicates removed, new_answer first
    assert first.answers == ("Washington", "Washington DC")
    assert first.new_single_hops[1] == SingleHop("The boss of WWE is", ("Vince", "McMahon"))
    # the multi-hop questions are portability prompts of the case's first record only
    assert vince.portability == tuple(PortabilityPrompt(q, "Franklin", MULTI_HOP) for q in CASES[0]["questions"])
    assert libya.portability == ()
    assert second.answers == ()
    assert [r.case_id for r in load_records("mquake", path)] == ["2500:0", "2500:1", "7:0"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.update(requested_rewrite=[]), "'requested_rewrite' must be a non-empty list"),
        (lambda c: c["requested_rewrite"][1].pop("subject"), "'requested_rewrite[1].subject' is missing"),
        (lambda c: c["requested_rewrite"][0].update(prompt="a citizen of"), "requested_rewrite[0].prompt"),
        (lambda c: c.update(questions=[]), "'questions' is empty"),
        (lambda c: c.pop("new_answer"), "'new_answer' is missing"),
        (lambda c: c["new_single_hops"][0].pop("cloze"), "'new_single_hops[0].cloze' is missing"),
        (lambda c: c["requested_rewrite"][0].update(target_new={"str": "USA"}), "equals requested_rewrite[0].target_true"),
    ],
)
def test_mquake_bad_cases_name_the_case_and_field(change, field: str) -> None:
    rows = json.loads(json.dumps(CASES))
    change(rows[0])
    with pytest.raises(DataError, match="case_id=2500") as err:
        parse_mquake_cases(rows, "mquake.json")
    assert field in str(err.value)


def test_multi_hop_accuracy_by_hand() -> None:
    model, tokenizer = _fake()
    cases = parse_mquake_cases(CASES)
    rows = evaluate_mquake(model, tokenizer, cases, batch_size=3)
    # case 2500: question 1 ends in "Triple" -> "Franklin Kentucky" (the alias; "Franklin" alone too),
    # question 2 also ends in "Triple"; edit 1 "Vince is a citizen of" -> Libya, edit 2 "... Libya is"
    # -> Tripoli (not Franklin); single hop 1 "... by" -> WWE, single hop 2 "... WWE is" -> Tripoli.
    assert rows[0] == {
        "case_id": "2500",
        "question_answered": [True, True],
        "multi_hop_correct": True,
        "edits_recalled": [True, False],
        "single_hops_answered": [True, False],
        "instance_correct": False,
    }
    # case 7: "... of Bob" -> Dutch, not Welsh; "Anna speaks" -> Welsh; "Bob 's mother speaks" -> Welsh
    assert rows[1]["question_answered"] == [False] and rows[1]["multi_hop_correct"] is False
    assert rows[1]["edits_recalled"] == [True] and rows[1]["instance_correct"] is True
    assert summarize_mquake(rows) == {
        "multi_hop_accuracy": 0.5,  # 1 of 2 cases
        "edit_wise_success": pytest.approx(2 / 3),  # 2 of 3 edited facts
        "instance_wise_accuracy": 0.5,  # 1 of 2 cases
    }
    # a question template around the question changes the last word and so the answer
    templated = evaluate_mquake(model, tokenizer, cases, question_template="Q: {} A: of")
    assert [r["question_answered"] for r in templated] == [[False, False], [False]]
    with pytest.raises(ValueError, match="question_template"):
        evaluate_mquake(model, tokenizer, cases, question_template="no slot")


def test_mquake_records_carry_multi_hop_portability() -> None:
    model, tokenizer = _fake()
    records = [r for case in parse_mquake_cases(CASES) for r in case.records]
    rows = evaluate_records(model, tokenizer, records, "easyedit")
    # token accuracy of "Franklin" after each question of case 2500 (both end in "Triple"): 1.0;
    # after case 7's question ("... Bob" -> Dutch) for "Welsh": 0.0
    assert rows[0]["portability_token_accuracy"] == [1.0, 1.0]
    assert rows[2]["portability_token_accuracy"] == [0.0]
    assert "portability_accuracy" not in rows[1]
    assert summarize(rows)["portability_accuracy"] == pytest.approx(0.5)


_LILY = {
    "case_id": 2500,
    "requested_rewrite": [
        _rewrite("the big dog", "One day, {} saw a", "big", "happy", "What did the big dog see?"),
        _rewrite("Lily", "{} liked to eat", "mom", "big", "What did Lily like to eat?"),
    ],
    # the first question is the prompt of the run's last edit, so a successful edit answers it
    "questions": ["Lily liked to eat", "What did Lily like?", "Tom said that Lily liked to eat"],
    "answer": "big",
    "new_answer": "happy",
    "new_answer_alias": ["mom"],  # single-token answers of the tiny tokenizer; the alias is the edited fact's
}
_MIA = {
    "case_id": 7,
    "requested_rewrite": [_rewrite("Mia", "{} wanted to play with her", "happy", "big", "What did Mia want?")],
    "questions": ["The sun was very", "Ben went to the", "They all felt"],
    "new_answer": "elephant",
}
#: Mia's case first: the Lily case's step is the last, so its after-step model is the final model.
STORY_CASES = [_MIA, _LILY]


def _greedy_answered(model, tokenizer, question: str, answers) -> bool:
    """Greedy decoding of ``question`` starts with one of ``answers``' tokens (the definition, computed directly)."""
    from edit_runner.models.scoring import greedy_next_tokens
    from edit_runner.models.tokens import target_token_ids

    wanted = [target_token_ids(tokenizer, a) for a in answers]
    continuation = greedy_next_tokens(model, tokenizer, [question], max(len(w) for w in wanted))[0]
    return any(continuation[: len(w)] == w for w in wanted)


def test_mquake_run_edits_whole_cases_and_reports_multi_hop_accuracy(tmp_path: Path, shared_dir: Path, one_thread) -> None:
    from e2e_helpers import run_job
    from edit_runner.models.loading import load_model
    from edit_runner.run_state import CheckpointStore

    data = tmp_path / "mquake.json"
    data.write_text(json.dumps(STORY_CASES))
    model_dir = shared_dir / "models" / "stories260K"
    overrides = [
        "algo=ft", "algo.layers=[3]", "algo.ft_lr=5e-3", "data=mquake", f"data.path={data}",
        "data.num_edits=null", "protocol=sequential", "protocol.checkpoint_every=1", "model=local", f"model.path={model_dir}",
        "model.name=stories260K", "model.device=cpu", "eval.perplexity=false", f"cache_dir={tmp_path / 'cache'}", "progress=false",
        "num_threads=1",
    ]
    summary = run_job(overrides, tmp_path / "run")
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["case_ids"] for s in steps] == [["7:0"], ["2500:0", "2500:1"]]  # one step per case, the case's rewrites together
    assert [[row["case_id"] for row in s["cases"]] for s in steps] == [["7"], ["2500"]]

    cases = parse_mquake_cases(STORY_CASES)

    def by_hand(loaded) -> dict[str, list[bool]]:
        return {case.case_id: [_greedy_answered(loaded.model, loaded.tokenizer, q, case.new_answers) for q in case.questions] for case in cases}

    unedited = load_model(str(model_dir), device="cpu")
    before = by_hand(unedited)
    # the final model: the unedited weights plus the checkpointed edited ones
    _, tensors = CheckpointStore(tmp_path / "run" / "checkpoint").load()
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name.startswith("weights."):
                module, attr = name[len("weights."):].rsplit(".", 1)
                getattr(unedited.model.get_submodule(module), attr).copy_(tensor)
    after = by_hand(unedited)
    assert after["2500"][0] and not any(after["7"]) and not any(before["2500"])  # the edit answers its own prompt
    assert steps[1]["cases"][0]["question_answered"] == after["2500"]  # the last step's model is the final one
    assert summary["post"]["final"]["multi_hop_accuracy"] == pytest.approx(sum(any(f) for f in after.values()) / 2)
    assert summary["pre"]["multi_hop_accuracy"] == pytest.approx(sum(any(f) for f in before.values()) / 2)
    after_own_step = [any(s["cases"][0]["question_answered"]) for s in steps]
    assert summary["post"]["multi_hop_accuracy"] == pytest.approx(sum(after_own_step) / 2)
    assert "multi_hop_accuracy" in summary["post"]["case_metric_definition"]


def test_case_suite_steps_are_whole_cases_and_a_split_case_is_refused(tmp_path: Path) -> None:
    from edit_runner.evaluation.multi_hop import CASE_SUITES

    data = tmp_path / "mquake.json"
    data.write_text(json.dumps(CASES))
    records = load_records("mquake", data)
    suite = CASE_SUITES.get("mquake")(data, records)
    ids = lambda steps: [[r.case_id for r in step] for step in steps]
    assert ids(suite.steps(records, 1)) == [["2500:0", "2500:1"], ["7:0"]]
    assert ids(suite.steps(records, None)) == [["2500:0", "2500:1", "7:0"]]
    assert ids(suite.steps(records[::-1], 1)) == [["7:0"], ["2500:1", "2500:0"]]
    with pytest.raises(DataError, match=r"data.num_edits.*\['2500:0'\] of MQuAKE case 2500"):
        CASE_SUITES.get("mquake")(data, records[:1])
