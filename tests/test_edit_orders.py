"""Published edit orders (seed 002, seed 004): pins, position → case-id mapping, the unique-subject rule."""

from __future__ import annotations

import collections
import io
import json
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from edit_runner.data.download import file_sha256
from edit_runner.data.edit_orders import (
    PUBLISHED_ORDERS,
    case_ids_filename,
    export_case_ids,
    main,
    order_case_ids,
    published_order,
    read_order,
    resolve_order_file,
    write_case_ids,
)
from edit_runner.data.loaders import load_records
from edit_runner.data.record import EditRecord
from edit_runner.data.selection import unique_subject_records
from edit_runner.errors import DataError

PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "experiment"

#: The shared copies of ENCORE's order files (``../shared/data/downstream/edit_orders``).
SHARED_ORDER_FILES = {
    "encore_counterfact": "counterfact_sampled_unique_cf_10_20000.json",
    "encore_multi_counterfact": "counterfact_sampled_unique_mcf_10_20000.json",
    "encore_zsre": "zsre_sampled_unique_10_10000.json",
}


@pytest.fixture(scope="module")
def orders_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "downstream" / "edit_orders"


@pytest.fixture(scope="module")
def mcf_records(shared_dir: Path) -> list[EditRecord]:
    return load_records(
        "multi_counterfact", shared_dir / "data" / "counterfact" / "multi_counterfact.partial19000.json"
    )


def _record(case_id: str, subject: str) -> EditRecord:
    return EditRecord(
        case_id=case_id, subject=subject, prompt="{} is in", target_new="Rome", target_true="Paris"
    )


def _mcf_rows(shared_dir: Path, count: int) -> list[dict]:
    rows = json.loads(
        (shared_dir / "data" / "counterfact" / "multi_counterfact.partial19000.json").read_text()
    )
    return rows[:count]


# ------------------------------------------------------------------------------------------ pins


@pytest.mark.parametrize("name", sorted(SHARED_ORDER_FILES))
def test_encore_pins_match_the_published_files(name: str, orders_dir: Path) -> None:
    order = PUBLISHED_ORDERS[name]
    path = orders_dir / SHARED_ORDER_FILES[name]
    assert path.stat().st_size == order.size
    assert file_sha256(path) == order.sha256
    assert Path(order.url).name == path.name
    samples = [read_order(path, k) for k in range(order.samples)]
    assert [len(s) for s in samples] == [order.length] * order.samples
    assert (
        samples[0][:3]
        == {
            "encore_counterfact": [14434, 2473, 4093],
            "encore_multi_counterfact": [15746, 5578, 9357],
            "encore_zsre": [3840, 19083, 15114],
        }[name]
    )


def test_registry_covers_seed002_and_encore() -> None:
    seed002 = PUBLISHED_ORDERS["seed002_counterfact"]
    assert (seed002.dataset, seed002.samples, seed002.length, seed002.size) == (
        "counterfact",
        10,
        20391,
        2951452,
    )
    assert seed002.url.endswith("/counterfact_sampled_unique_10_20391.json")
    assert {o.dataset for o in PUBLISHED_ORDERS.values()} == {"counterfact", "multi_counterfact", "zsre"}
    with pytest.raises(DataError, match="unknown edit order 'seed003'.*seed002_counterfact"):
        published_order("seed003")


def test_download_is_sha256_checked(
    orders_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = PUBLISHED_ORDERS["encore_zsre"]
    payload = (orders_dir / SHARED_ORDER_FILES["encore_zsre"]).read_bytes()
    served: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        served.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = resolve_order_file(order, None, tmp_path)
    assert path == tmp_path / "data" / "zsre_sampled_unique_10_10000.json"
    assert served == [order.url] and file_sha256(path) == order.sha256

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: io.BytesIO(b'{"0": [1]}'))
    other = PUBLISHED_ORDERS["encore_counterfact"]
    with pytest.raises(DataError, match=f"expected {other.sha256}.*--order-file") as err:
        resolve_order_file(other, None, tmp_path)
    assert other.url in str(err.value)
    assert not (tmp_path / "data" / "counterfact_sampled_unique_cf_10_20000.json").exists()


def test_local_order_file_is_verified(tmp_path: Path, orders_dir: Path) -> None:
    order = PUBLISHED_ORDERS["encore_counterfact"]
    good = orders_dir / SHARED_ORDER_FILES["encore_counterfact"]
    assert resolve_order_file(order, good, tmp_path) == good
    fake = tmp_path / "order.json"
    fake.write_text('{"0": [2, 0]}')
    with pytest.raises(DataError, match="expected dcecf276.*--no-verify"):
        resolve_order_file(order, fake, tmp_path)
    assert resolve_order_file(order, fake, tmp_path, verify=False) == fake


def test_offline_without_a_copy_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDIT_RUNNER_OFFLINE", "1")
    order = PUBLISHED_ORDERS["seed002_counterfact"]
    with pytest.raises(DataError) as err:
        resolve_order_file(order, None, tmp_path)
    assert order.url in str(err.value) and order.sha256 in str(err.value)


# ------------------------------------------------------------------------------ reading, mapping


def test_read_order_rejects_bad_files(tmp_path: Path) -> None:
    file = tmp_path / "order.json"
    cases = {
        "[1, 2]": "expected an object of samples",
        '{"0": [1, 2]}': "no sample '3'",
        '{"3": [1, 1]}': "more than once",
        '{"3": [1, -2]}': "non-negative integer",
        '{"3": [1, true]}': "non-negative integer",
        '{"3": [1,': "malformed JSON",
    }
    for text, message in cases.items():
        file.write_text(text)
        with pytest.raises(DataError, match=message):
            read_order(file, 3)
    file.write_text('{"0": [5, 0, 2]}')
    assert read_order(file, "0") == read_order(file, 0) == [5, 0, 2]


def test_positions_map_through_the_dataset_file() -> None:
    records = [_record(str(c), f"s{c}") for c in (0, 1, 3, 7, 8)]  # MultiCounterFact-style gaps in case ids
    assert order_case_ids(records, [4, 0, 2]) == ["8", "0", "3"]
    with pytest.raises(DataError, match=r"positions \[5, 9\] are beyond the dataset's 5 records"):
        order_case_ids(records, [1, 5, 9])


def test_unique_subject_records_keeps_first_occurrence() -> None:
    records = [
        _record("0", "Paris"),
        _record("1", "Rome"),
        _record("2", "paris"),
        _record("3", "PARIS"),
        _record("4", "Oslo"),
    ]
    kept = unique_subject_records(records)
    assert [r.case_id for r in kept] == ["0", "1", "4"]
    assert unique_subject_records(kept) == kept


def test_seed002_orders_repeat_no_subject(orders_dir: Path, mcf_records: list[EditRecord]) -> None:
    """Seed 002's samples (= ENCORE's cf file, its first 20,000 entries) are case ids of counterfact.json
    with no subject twice; read as counterfact.json case ids, the mcf file (built on
    multi_counterfact.json positions) does repeat subjects. MultiCounterFact records keep their
    CounterFact case ids, so the shared partial file gives the subjects of 19,000 of them."""
    by_case = {r.case_id: r for r in mcf_records}
    found = {}
    for name in ("encore_counterfact", "encore_multi_counterfact"):
        positions = read_order(orders_dir / SHARED_ORDER_FILES[name], 0)
        found[name] = [by_case[str(p)] for p in positions if str(p) in by_case]
    assert len(found["encore_counterfact"]) == 17912
    assert unique_subject_records(found["encore_counterfact"]) == found["encore_counterfact"]
    counts = collections.Counter(r.subject.lower() for r in found["encore_multi_counterfact"])
    assert len(found["encore_multi_counterfact"]) == 17336
    assert sum(n - 1 for n in counts.values() if n > 1) == 534


# ------------------------------------------------------------------------------------- export


def test_export_and_cli_write_case_id_lists(tmp_path: Path, shared_dir: Path, capsys) -> None:
    rows = _mcf_rows(shared_dir, 12)
    dataset = tmp_path / "multi_counterfact.json"
    dataset.write_text(json.dumps(rows))
    order_file = tmp_path / "order.json"
    order_file.write_text(json.dumps({"0": [11, 3, 0], "1": [4, 5]}))
    case_ids = [row["case_id"] for row in rows]

    paths = export_case_ids(
        "encore_multi_counterfact", ["0", "1"], tmp_path / "out", order_file, dataset, tmp_path, verify=False
    )
    assert [p.name for p in paths] == [case_ids_filename("encore_multi_counterfact", k) for k in ("0", "1")]
    assert json.loads(paths[0].read_text()) == [case_ids[11], case_ids[3], case_ids[0]]
    assert json.loads(paths[1].read_text()) == [case_ids[4], case_ids[5]]

    argv = ["encore_multi_counterfact", "--samples", "1", "--out-dir", str(tmp_path / "cli"),
            "--order-file", str(order_file), "--dataset-file", str(dataset), "--no-verify"]  # fmt: skip
    assert main(argv) == 0
    written = tmp_path / "cli" / "encore_multi_counterfact.sample1.case_ids.json"
    assert capsys.readouterr().out.strip() == str(written)
    assert json.loads(written.read_text()) == [case_ids[4], case_ids[5]]

    with pytest.raises(SystemExit) as exit_info:
        main(argv[:-1])  # the fake order file fails the sha256 check
    assert exit_info.value.code == 2
    assert "expected 8ed45d7c" in capsys.readouterr().err


def test_write_case_ids_keeps_string_ids(tmp_path: Path) -> None:
    assert json.loads(write_case_ids(["3", "10"], tmp_path / "a" / "ids.json").read_text()) == [3, 10]
    assert json.loads(write_case_ids(["paris-rome", "7"], tmp_path / "ids.json").read_text()) == [
        "paris-rome",
        "7",
    ]


@pytest.mark.parametrize(
    ("preset", "order"),
    [
        ("seed002", "seed002_counterfact"),
        ("seed004_table1", "encore_multi_counterfact"),
        ("seed004_tables2_4", "encore_multi_counterfact"),
        ("seed004_tables12_14", "encore_zsre"),
    ],
)
def test_presets_read_the_exported_files(preset: str, order: str) -> None:
    """The presets' ``data.case_ids_file`` is the file the exporter writes for sample ``${trial}``."""
    raw = OmegaConf.load(PRESET_DIR / f"{preset}.yaml")
    data = OmegaConf.to_container(raw.data, resolve=False)
    assert Path(data["case_ids_file"]).name == case_ids_filename(order, "${trial}")
    assert data.get("shuffle", False) is False
    assert {"override /data": PUBLISHED_ORDERS[order].dataset} in OmegaConf.to_container(raw.defaults)
    assert f"python -m edit_runner.data.edit_orders {order}" in (PRESET_DIR / f"{preset}.yaml").read_text()
