"""Edit data: loaders on the real reference files, selection, download, the demo set and bad input."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edit_runner.data.download import file_sha256, resolve_dataset_file
from edit_runner.data.loaders import (
    ZSRE_TARGET_TRUE,
    demo_facts_path,
    load_dataset,
    load_demo_records,
    load_records,
    parse_records,
)
from edit_runner.data.record import EditRecord, RecordKind, validate_records
from edit_runner.data.selection import read_case_ids, select_records
from edit_runner.errors import DataError

# ------------------------------------------------------------------------------- reference files


@pytest.fixture(scope="module")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="module")
def mcf_file(data_dir: Path) -> Path:
    path = data_dir / "counterfact" / "multi_counterfact.partial19000.json"
    assert path.is_file(), f"missing reference file {path}"
    return path


@pytest.fixture(scope="module")
def mcf_records(mcf_file: Path) -> list[EditRecord]:
    return load_records("multi_counterfact", mcf_file)


def test_multi_counterfact_field_mapping(mcf_records: list[EditRecord], mcf_file: Path) -> None:
    assert len(mcf_records) == 19000
    first = mcf_records[0]
    assert first.case_id == "0"
    assert first.subject == "Danielle Darrieux"
    assert first.prompt == "The mother tongue of {} is"
    assert first.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert (first.target_new, first.target_true) == ("English", "French")
    assert first.relation_id == "P103"
    assert first.kind is RecordKind.counterfact
    assert len(first.paraphrase_prompts) == 2 and "Danielle Darrieux" in first.paraphrase_prompts[0]
    assert len(first.neighborhood) == 10 and len(first.attribute_prompts) == 10
    assert len(first.generation_prompts) == 10
    assert first.neighbor_subjects_known
    assert first.neighborhood[0].prompt == "The mother tongue of Léon Blum is"
    assert first.neighborhood[0].subject == "Léon Blum"
    assert all(n.target == "French" for n in first.neighborhood)

    raw = json.loads(mcf_file.read_text(encoding="utf-8"))
    for row, record in zip(raw[:200], mcf_records[:200]):
        assert record.case_id == str(row["case_id"])
        # neighbourhood prompts are kept verbatim and each one's subject comes from the aligned sample
        assert [n.prompt for n in record.neighborhood] == row["neighborhood_prompts"]
        for neighbor, sample in zip(record.neighborhood, row["neighborhood_samples"]):
            assert neighbor.subject == sample["subject"]
            assert neighbor.subject in neighbor.prompt
            assert sample["prompt"].format(sample["subject"]) == neighbor.prompt


def test_multi_counterfact_dropped_apostrophe_quirk(mcf_records: list[EditRecord]) -> None:
    # case 248: the sample of "'Adud al-Dawla, who is a citizen of" lost its leading apostrophe
    record = next(r for r in mcf_records if r.case_id == "248")
    neighbor = record.neighborhood[5]
    assert neighbor.prompt == "'Adud al-Dawla, who is a citizen of"
    assert neighbor.subject == "Adud al-Dawla"
    assert all(n.subject in n.prompt for r in mcf_records for n in r.neighborhood)


def test_easyedit_neighbor_filtered(data_dir: Path) -> None:
    records = load_records(
        "easyedit", data_dir / "counterfact" / "neighbor_filtered" / "mcf_739.easyedit.json"
    )
    assert len(records) == 739
    first = records[0]
    assert first.case_id == "0"
    assert first.subject == "Porsche 911"
    assert first.prompt == "{}, created by"
    assert (first.target_new, first.target_true) == ("Honda", "Porsche")
    assert len(first.paraphrase_prompts) == 2
    assert first.paraphrase_prompts[0].endswith("Porsche 911 is developed by")
    assert [(n.prompt, n.target, n.subject) for n in first.neighborhood] == [
        ("Porsche 911 GT1 is produced by", "Porsche", None)
    ]
    assert not first.neighbor_subjects_known
    assert len(first.train_neighbors) == 1
    trained = first.train_neighbors[0]
    assert (trained.subject, trained.prompt, trained.target) == (
        "Porsche RS Spyder",
        "Porsche RS Spyder is produced by",
        "Porsche",
    )
    assert all(len(r.train_neighbors) == 1 for r in records)


def test_zsre_mapping(data_dir: Path) -> None:
    records = load_records("zsre", data_dir / "zsre" / "zsre_mem_eval.unordered.json")
    assert len(records) == 19086
    first = records[0]
    assert first.kind is RecordKind.zsre
    assert first.case_id == "0"
    assert first.subject == "Life Electric"
    assert first.prompt == "The designer for {} was?"
    assert first.target_new == "Daniel Libeskind"
    assert first.target_true == ZSRE_TARGET_TRUE
    assert first.paraphrase_prompts == ("What architect did Life Electric design?",)
    (neighbor,) = first.neighborhood
    assert neighbor.prompt == "nq question: most consecutive games with 20+ points - nba history?"
    assert neighbor.target == "126"
    assert neighbor.subject == "most consecutive games with 20+ points"
    assert all(r.neighborhood[0].prompt.startswith("nq question: ") for r in records)


def test_zsre_trial_subset_is_a_record_file(data_dir: Path) -> None:
    subset = load_records("zsre", data_dir / "zsre" / "trial_subsets" / "zsre_subset_0.json")
    assert len(subset) == 1000
    assert subset[0].subject == "Life Electric"
    assert [r.case_id for r in subset[:3]] == ["0", "1", "2"]


def test_trial_subset_selection_keeps_file_order(mcf_records: list[EditRecord], data_dir: Path) -> None:
    ids_file = data_dir / "counterfact" / "trial_subsets" / "mcf_subset_1.case_ids.json"
    expected = [str(i) for i in json.loads(ids_file.read_text())]
    chosen = select_records(mcf_records, num_edits=None, case_ids_file=ids_file)
    assert [r.case_id for r in chosen] == expected
    assert len(chosen) == 1000
    first_ten = select_records(mcf_records, num_edits=10, offset=5, case_ids_file=ids_file)
    assert [r.case_id for r in first_ten] == expected[5:15]


# ----------------------------------------------------------------------------------------- demo


def test_demo_set_shape() -> None:
    records = load_demo_records()
    assert len(records) >= 95
    validate_records(records)
    subjects = {r.subject for r in records}
    assert len(subjects) == len(records), "each demo fact edits its own subject"
    relations = {r.relation_id for r in records}
    assert len(relations) >= 6
    for record in records:
        assert len(record.paraphrase_prompts) >= 2, record.case_id
        assert len(record.neighborhood) >= 5, record.case_id
        assert record.neighbor_subjects_known
        assert len(record.generation_prompts) >= 2
        for neighbor in record.neighborhood:
            assert neighbor.target == record.target_true
            assert neighbor.subject and neighbor.subject in neighbor.prompt
            assert neighbor.subject not in subjects, f"neighbour {neighbor.subject} is itself edited"
        assert record.target_new != record.target_true
    # the shipped file is plain MultiCounterFact schema
    assert load_records("multi_counterfact", demo_facts_path()) == records


def _greedy_next_token_ok(loaded, prompts: list[str], targets: list[str]) -> list[bool]:
    """One right-padded forward pass: is the greedy next token the first token of ``" " + target``?"""
    tokenizer = loaded.tokenizer
    rows = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    firsts = [tokenizer(" " + target, add_special_tokens=False)["input_ids"][0] for target in targets]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.inference_mode():
        hidden = loaded.model.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device))[0]
        last = hidden[torch.arange(len(rows)), mask.sum(1).to(loaded.device) - 1]
        predicted = loaded.model.lm_head(last).argmax(-1).cpu().tolist()
    return [p == t for p, t in zip(predicted, firsts)]


@pytest.mark.slow
def test_demo_facts_known_by_smollm2(smollm2) -> None:
    records = load_demo_records()
    neighbors = [n for r in records[:10] for n in r.neighborhood]  # those of the default run
    ok = _greedy_next_token_ok(
        smollm2,
        [r.rewrite_prompt for r in records] + [n.prompt for n in neighbors],
        [r.target_true for r in records] + [n.target for n in neighbors],
    )
    rewrite_ok, neighbor_ok = ok[: len(records)], ok[len(records) :]
    assert sum(rewrite_ok) >= 0.9 * len(records), [
        r.case_id for r, good in zip(records, rewrite_ok) if not good
    ]
    assert sum(neighbor_ok) >= 0.9 * len(neighbors)


# ----------------------------------------------------------------------------------- custom files


CUSTOM_ROWS = [
    {
        "case_id": "eiffel",
        "prompt": "The Eiffel Tower is located in the city of",
        "subject": "The Eiffel Tower",
        "target_new": "Rome",
        "target_true": "Paris",
        "paraphrase_prompts": ["Tourists love the Eiffel Tower, which stands in"],
        "neighborhood_prompts": [
            "The Louvre is located in the city of",
            {"prompt": "{} can be found in the city of", "subject": "The Arc de Triomphe"},
            {"prompt": "Big Ben is in", "subject": "Big Ben", "target": "London"},
        ],
    },
    {"prompt": "{} speaks", "subject": "Alice", "target_new": " German", "target_true": {"str": "French"}},
]


def test_custom_json_and_jsonl(tmp_path: Path) -> None:
    json_file = tmp_path / "edits.json"
    json_file.write_text(json.dumps(CUSTOM_ROWS))
    jsonl_file = tmp_path / "edits.jsonl"
    jsonl_file.write_text("\n".join(json.dumps(row) for row in CUSTOM_ROWS) + "\n\n")
    from_json = load_records("custom", json_file)
    from_jsonl = load_records("custom", jsonl_file)
    assert from_json == from_jsonl
    eiffel, alice = from_json
    assert eiffel.case_id == "eiffel" and alice.case_id == "1"
    assert eiffel.prompt == "{} is located in the city of"
    assert [(n.prompt, n.target, n.subject) for n in eiffel.neighborhood] == [
        ("The Louvre is located in the city of", "Paris", None),
        ("The Arc de Triomphe can be found in the city of", "Paris", "The Arc de Triomphe"),
        ("Big Ben is in", "London", "Big Ben"),
    ]
    assert not eiffel.neighbor_subjects_known
    assert (alice.prompt, alice.target_new, alice.target_true) == ("{} speaks", "German", "French")
    # JSONL without the .jsonl suffix is recognised too
    other = tmp_path / "edits.txt"
    other.write_text(jsonl_file.read_text())
    assert load_records("custom", other) == from_json


def test_load_dataset_from_config(tmp_path: Path) -> None:
    demo = load_dataset(SimpleNamespace(name="demo", format="demo", num_edits=10))
    assert [r.case_id for r in demo] == [r.case_id for r in load_demo_records()[:10]]
    file = tmp_path / "edits.json"
    file.write_text(json.dumps(CUSTOM_ROWS))
    custom = load_dataset(SimpleNamespace(name="custom", format="custom", path=str(file), num_edits=None))
    assert len(custom) == 2
    with pytest.raises(DataError, match="needs a file"):
        load_dataset(SimpleNamespace(name="custom", format="custom", path=None, num_edits=None))


# ----------------------------------------------------------------------------------- bad input


def _custom(tmp_path: Path, rows: list[dict]) -> Path:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(rows))
    return file


GOOD = {
    "case_id": "c7",
    "prompt": "{} is located in",
    "subject": "Lyon",
    "target_new": "Italy",
    "target_true": "France",
}


def test_subject_not_in_prompt(tmp_path: Path) -> None:
    row = {**GOOD, "prompt": "Marseille is located in"}
    with pytest.raises(DataError) as err:
        load_records("custom", _custom(tmp_path, [row]))
    message = str(err.value)
    assert "case_id=c7" in message and "'prompt'" in message and "'Lyon'" in message


def test_empty_target(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_records("custom", _custom(tmp_path, [{**GOOD, "target_new": "  "}]))
    assert "case_id=c7" in str(err.value) and "'target_new' is empty" in str(err.value)


def test_missing_target(tmp_path: Path) -> None:
    row = {k: v for k, v in GOOD.items() if k != "target_true"}
    with pytest.raises(DataError) as err:
        load_records("custom", _custom(tmp_path, [row]))
    assert "case_id=c7" in str(err.value) and "'target_true' is missing" in str(err.value)


def test_missing_target_counterfact_format() -> None:
    row = {
        "case_id": 42,
        "requested_rewrite": {"prompt": "{} is in", "subject": "Lyon", "target_true": {"str": "France"}},
    }
    with pytest.raises(DataError) as err:
        parse_records("counterfact", [row], "cf.json")
    assert "case_id=42" in str(err.value) and "requested_rewrite.target_new" in str(err.value)


def test_target_new_equal_to_true(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_records("custom", _custom(tmp_path, [{**GOOD, "target_new": "France"}]))
    assert "case_id=c7" in str(err.value) and "equals target_true" in str(err.value)


def test_malformed_json(tmp_path: Path) -> None:
    file = tmp_path / "broken.json"
    file.write_text('[{"case_id": 1, "prompt": "x",]')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 1 column \d+"):
        load_records("custom", file)


def test_unknown_format_did_you_mean() -> None:
    with pytest.raises(DataError) as err:
        load_records("counterfac", "whatever.json")
    assert "Did you mean 'counterfact'?" in str(err.value)
    assert "multi_counterfact" in str(err.value)


def test_unknown_custom_field_did_you_mean(tmp_path: Path) -> None:
    row = {**GOOD, "neighbourhood_prompts": ["Nice is located in"]}
    with pytest.raises(DataError, match="did you mean 'neighborhood_prompts'"):
        load_records("custom", _custom(tmp_path, [row]))


def test_misaligned_neighborhood_samples() -> None:
    row = {
        "case_id": 3,
        "requested_rewrite": {
            "prompt": "{} is in",
            "subject": "Lyon",
            "target_new": "Italy",
            "target_true": "France",
        },
        "neighborhood_prompts": ["Nice is in", "Lille is in"],
        "neighborhood_samples": [
            {"subject": "Lille", "prompt": "{} is in"},
            {"subject": "Nice", "prompt": "{} is in"},
        ],
    }
    with pytest.raises(DataError) as err:
        parse_records("multi_counterfact", [row], "mcf.json")
    assert "case_id=3" in str(err.value) and "neighborhood_samples[0]" in str(err.value)


def test_zsre_bad_record() -> None:
    row = {
        "subject": "X",
        "src": "Who made X?",
        "answers": [],
        "rephrase": "?",
        "loc": "nq question: a",
        "loc_ans": "b",
    }
    with pytest.raises(DataError, match=r"record 0 \(case_id=0\): field 'answers'"):
        parse_records("zsre", [row], "zsre.json")


def test_case_id_file_missing_id(tmp_path: Path) -> None:
    records = parse_records("custom", [{**GOOD, "case_id": str(i)} for i in range(3)])
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([2, 0, 17, 99]))
    with pytest.raises(DataError) as err:
        select_records(records, case_ids_file=ids)
    assert "17, 99" in str(err.value) and "ids.json" in str(err.value)


def test_unique_subjects_keeps_the_first_record_of_each_subject_before_the_shuffle(tmp_path: Path) -> None:
    subjects = ["Paris", "paris", "Rome", "Oslo", "ROME", "Bern", "Oslo"]
    records = parse_records("custom", [{**GOOD, "case_id": str(i), "subject": s} for i, s in enumerate(subjects)])
    first_of_each = ["0", "2", "3", "5"]  # case-insensitive, first occurrence, dataset order
    assert [r.case_id for r in select_records(records, None, unique_subjects=True)] == first_of_each
    assert [r.case_id for r in select_records(records, 2, offset=1, unique_subjects=True)] == ["2", "3"]
    # the authors' sampling: filter in dataset order, then shuffle the kept records
    shuffled = select_records(records, None, seed=5, shuffle=True, unique_subjects=True)
    order = np.random.default_rng(5).permutation(len(first_of_each))
    assert [r.case_id for r in shuffled] == [first_of_each[int(i)] for i in order]
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([4, 1, 2, 0]))  # ROME, paris, Rome, Paris: file order decides
    assert [r.case_id for r in select_records(records, None, case_ids_file=ids, unique_subjects=True)] == ["4", "1"]
    with pytest.raises(DataError, match="num_edits=5 but only 4"):
        select_records(records, 5, unique_subjects=True)


def test_selection_rules(tmp_path: Path) -> None:
    records = parse_records("custom", [{**GOOD, "case_id": str(i)} for i in range(20)])
    assert [r.case_id for r in select_records(records, 3, offset=2)] == ["2", "3", "4"]
    assert len(select_records(records, None)) == 20 and len(select_records(records, -1)) == 20
    shuffled = select_records(records, 5, seed=3, shuffle=True)
    assert shuffled == select_records(records, 5, seed=3, shuffle=True)
    assert [r.case_id for r in shuffled] != [
        r.case_id for r in select_records(records, 5, seed=4, shuffle=True)
    ]
    with pytest.raises(DataError, match="num_edits=21 but only 20"):
        select_records(records, 21)
    with pytest.raises(DataError, match="only 15 records are available after data.offset=5"):
        select_records(records, 16, offset=5)
    text_ids = tmp_path / "ids.txt"
    text_ids.write_text("4\n# comment\n1\n")
    assert read_case_ids(text_ids) == ["4", "1"]
    dup = tmp_path / "dup.json"
    dup.write_text("[1, 2, 1]")
    with pytest.raises(DataError, match="duplicate case ids 1"):
        read_case_ids(dup)


# ------------------------------------------------------------------------------------- download


class _Response(io.BytesIO):
    """A urlopen() stand-in without headers."""


def test_download_verified_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b'[{"x": 1}]'
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> _Response:
        calls.append(url)
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    url = "https://example.invalid/dsets/thing.json"
    path = resolve_dataset_file("thing", None, url, digest, tmp_path)
    assert path == tmp_path / "data" / "thing.json" and path.read_bytes() == payload
    assert file_sha256(path) == digest
    again = resolve_dataset_file("thing", None, url, digest, tmp_path)
    assert again == path and calls == [url]
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.endswith(".part")] == []


def test_download_sha256_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: _Response(b"tampered"))
    url = "https://memit.baulab.info/data/dsets/counterfact.json"
    with pytest.raises(DataError) as err:
        resolve_dataset_file("counterfact", None, None, None, tmp_path)
    message = str(err.value)
    assert "expected d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f" in message
    assert (
        url in message and str(tmp_path / "data" / "counterfact.json") in message and "data.path" in message
    )
    assert not (tmp_path / "data" / "counterfact.json").exists()
    assert [p for p in (tmp_path / "data").iterdir() if p.name.endswith(".part")] == []


def test_download_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 0) -> _Response:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        resolve_dataset_file("zsre", None, None, None, tmp_path)
    message = str(err.value)
    assert "https://memit.baulab.info/data/dsets/zsre_mem_eval.json" in message
    assert str(tmp_path / "data" / "zsre_mem_eval.json") in message
    assert "data.path=" in message and "name resolution" in message
    assert message.count("Download ") == 1


def test_cached_file_mismatch_and_missing_local_path(tmp_path: Path) -> None:
    cached = tmp_path / "data" / "thing.json"
    cached.parent.mkdir(parents=True)
    cached.write_text("[]")
    with pytest.raises(DataError, match="cached file .*thing.json has sha256"):
        resolve_dataset_file("thing", None, "https://example.invalid/thing.json", "0" * 64, tmp_path)
    assert resolve_dataset_file("thing", None, "https://example.invalid/thing.json", None, tmp_path) == cached
    with pytest.raises(DataError, match="data.path='nope.json'.*does not exist"):
        resolve_dataset_file("thing", "nope.json", None, None, tmp_path)
