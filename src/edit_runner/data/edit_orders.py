"""The papers' published edit orders, as ordered case-id lists for ``data.case_ids_file``.

Seed 002 (Gupta et al. 2024) and seed 004 (ENCORE) edit fixed random samples of their datasets. The
authors published them as JSON objects ``{"0": [...], ..., "9": [...]}``: ten samples, each an ordered
list of **positions** in the dataset file (``dataset[i]`` of the reference ``CounterFactDataset`` /
``MENDQADataset``). Their ``create_samples*.py`` scripts keep the first record of every distinct
lower-cased subject, then shuffle that list ten times in a row with ``random.seed(37)`` and store each
shuffle (truncated to the sample size), so no subject is edited twice within a sample ("the same
subject is not edited twice", seed 002 §3).

:data:`PUBLISHED_ORDERS` pins each file (URL, sha256, size). :func:`export_case_ids` turns samples
into case-id lists (positions mapped through the dataset file), written where a preset's
``data.case_ids_file`` expects them; ``python -m edit_runner.data.edit_orders --help`` does the same
from the command line. :func:`~edit_runner.data.selection.unique_subject_records` is the authors' subject rule
(``data.unique_subjects=true`` applies it to a run's selection).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from edit_runner.data.download import file_sha256, resolve_dataset_file
from edit_runner.data.loaders import load_records
from edit_runner.data.record import EditRecord
from edit_runner.errors import DataError

_RAW = "https://raw.githubusercontent.com/scalable-model-editing"
#: Commit of scalable-model-editing/gradual-catastrophic-forgetting (seed 002's repository).
SEED002_COMMIT = "88a07d7f7517a02024d53e14f17d276cf8542943"
#: Commit of scalable-model-editing/unified-model-editing holding ENCORE's order files (its ``data/``).
ENCORE_ORDERS_COMMIT = "cf1907fc3e90c87ff9724c3fd750b290658a3f97"


@dataclass(frozen=True)
class PublishedOrder:
    """One published order file: where it lives, its pin, and the dataset file its positions index."""

    name: str
    url: str
    sha256: str
    size: int
    dataset: str
    samples: int
    length: int
    source: str


PUBLISHED_ORDERS: MappingProxyType[str, PublishedOrder] = MappingProxyType(
    {
        # Seed 002: 10 samples of all 20,391 unique-subject records of ROME's counterfact.json
        # (create_samples.py). The sha256 was computed from the file regenerated with the authors'
        # script, which matches the stored copy's length (2,951,452 bytes) and text; the first 20,000
        # entries of each sample are byte for byte ENCORE's counterfact_sampled_unique_cf_10_20000.json.
        "seed002_counterfact": PublishedOrder(
            "seed002_counterfact",
            f"{_RAW}/gradual-catastrophic-forgetting/{SEED002_COMMIT}/counterfact_sampled_unique_10_20391.json",
            "16c4b85938afdf15b54ad6f163d17013e9dc2043518c8e4169068dc64f8cffdc",
            2_951_452,
            "counterfact",
            10,
            20_391,
            "scalable-model-editing/gradual-catastrophic-forgetting: counterfact_sampled_unique_10_20391.json",
        ),
        # Seed 004 (ENCORE), create_samples_cf.py with mcf_flag=True: positions in multi_counterfact.json.
        # (ENCORE's driver evaluate_unified_editing.py indexes CounterFactDataset('data'), i.e.
        # counterfact.json, with this file for ds_name=mcf as well as cf; the file itself was built from
        # multi_counterfact.json, whose unique subjects it samples.)
        "encore_multi_counterfact": PublishedOrder(
            "encore_multi_counterfact",
            f"{_RAW}/unified-model-editing/{ENCORE_ORDERS_COMMIT}/data/counterfact_sampled_unique_mcf_10_20000.json",
            "8ed45d7ce1e0bc6c1c4822b385ffeae93048bde55bbcc46a6e1207c91ef7cfd7",
            2_891_372,
            "multi_counterfact",
            10,
            20_000,
            "scalable-model-editing/unified-model-editing: data/counterfact_sampled_unique_mcf_10_20000.json",
        ),
        "encore_counterfact": PublishedOrder(
            "encore_counterfact",
            f"{_RAW}/unified-model-editing/{ENCORE_ORDERS_COMMIT}/data/counterfact_sampled_unique_cf_10_20000.json",
            "dcecf276656879f2862cd513b587f658fa1e1b0b9bae09890ddfb2f718811870",
            2_894_873,
            "counterfact",
            10,
            20_000,
            "scalable-model-editing/unified-model-editing: data/counterfact_sampled_unique_cf_10_20000.json",
        ),
        "encore_zsre": PublishedOrder(
            "encore_zsre",
            f"{_RAW}/unified-model-editing/{ENCORE_ORDERS_COMMIT}/data/zsre_sampled_unique_10_10000.json",
            "386bd744dde14e988f90ff1564f984d4bd08966bd9ab5f029e317d93c5043eb7",
            1_442_024,
            "zsre",
            10,
            10_000,
            "scalable-model-editing/unified-model-editing: data/zsre_sampled_unique_10_10000.json",
        ),
    }
)


def published_order(name: str) -> PublishedOrder:
    """The registered order ``name``; an unknown name raises a DataError listing the known ones."""
    try:
        return PUBLISHED_ORDERS[name]
    except KeyError:
        raise DataError(
            f"unknown edit order {name!r}; published orders: {', '.join(PUBLISHED_ORDERS)}"
        ) from None


def case_ids_filename(name: str, sample: str | int) -> str:
    """The file name a sample's case-id list is written under (presets point ``data.case_ids_file`` at it)."""
    return f"{name}.sample{sample}.case_ids.json"


def resolve_order_file(
    order: PublishedOrder,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> Path:
    """A local copy of ``order``'s file: ``path`` if given, else the cached or downloaded file.

    Downloads are sha256-checked by :func:`~edit_runner.data.download.resolve_dataset_file`; with
    ``verify`` a local ``path`` is checked against the pin too (a mismatch is a DataError).
    """
    try:
        file = resolve_dataset_file(order.name, path, order.url, order.sha256, cache_dir)
    except DataError as err:
        raise DataError(f"{err} (an edit-order file is given with --order-file / order_file=)") from None
    if verify and path is not None and str(path) != "":
        actual = file_sha256(file)
        if actual != order.sha256:
            raise DataError(
                f"edit order {order.name}: {file} has sha256 {actual}, expected {order.sha256} "
                f"({order.source}). Pass the published file, or verify=False (--no-verify) to use this one on purpose."
            )
    return file


def read_order(path: str | os.PathLike[str], sample: str | int) -> list[int]:
    """The positions of sample ``sample`` in an order file ``{"0": [...], ...}``, in order.

    Positions must be distinct non-negative integers; anything else is a DataError naming the file.
    """
    file = Path(path)
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"edit-order file {file} does not exist") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{file}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{file}: expected an object of samples {{'0': [...], ...}}, got {type(loaded).__name__}"
        )
    key = str(sample)
    if key not in loaded:
        raise DataError(
            f"{file}: no sample {key!r}; the file has samples {', '.join(sorted(loaded, key=str))}"
        )
    positions = loaded[key]
    if not isinstance(positions, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions
    ):
        raise DataError(f"{file}: sample {key!r} must be a list of non-negative integer positions")
    if len(set(positions)) != len(positions):
        raise DataError(f"{file}: sample {key!r} lists a position more than once")
    return positions


def order_case_ids(
    records: Sequence[EditRecord], positions: Sequence[int], source: str = "edit order"
) -> list[str]:
    """The case ids of ``records[p]`` for each position ``p`` (``records`` in dataset-file order)."""
    beyond = [p for p in positions if p >= len(records)]
    if beyond:
        raise DataError(
            f"{source}: positions {beyond[:10]} are beyond the dataset's {len(records)} records; "
            "the order belongs to another (or a partial) dataset file"
        )
    return [records[p].case_id for p in positions]


def write_case_ids(case_ids: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Write an ordered case-id list as JSON (integers where every id is numeric), creating parent folders."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    values: list[int] | list[str] = (
        [int(c) for c in case_ids] if all(c.isdigit() for c in case_ids) else list(case_ids)
    )
    file.write_text(json.dumps(values), encoding="utf-8")
    return file


def export_case_ids(
    name: str,
    samples: Sequence[str | int],
    out_dir: str | os.PathLike[str],
    order_file: str | os.PathLike[str] | None = None,
    dataset_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> list[Path]:
    """Write ``<out_dir>/<name>.sample<k>.case_ids.json`` for each sample ``k`` of the published order.

    ``order_file`` / ``dataset_file`` are local copies; when missing they are downloaded into the
    cache (the order sha256-checked, the dataset from its canonical location). Positions are mapped
    to case ids through the full dataset file of :attr:`PublishedOrder.dataset`.
    """
    order = published_order(name)
    file = resolve_order_file(order, order_file, cache_dir, verify=verify)
    dataset = resolve_dataset_file(order.dataset, dataset_file, None, None, cache_dir)
    records = load_records(order.dataset, dataset)
    written = []
    for sample in samples:
        positions = read_order(file, sample)
        case_ids = order_case_ids(records, positions, source=f"edit order {name} sample {sample}")
        written.append(write_case_ids(case_ids, Path(out_dir) / case_ids_filename(name, sample)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write case-id lists of a published order for ``data.case_ids_file``."""
    parser = argparse.ArgumentParser(
        prog="python -m edit_runner.data.edit_orders",
        description="Turn the papers' published edit orders into case-id lists for data.case_ids_file.",
    )
    parser.add_argument("name", choices=sorted(PUBLISHED_ORDERS), help="published order")
    parser.add_argument("--samples", nargs="+", default=["0"], help="sample keys (default: 0)")
    parser.add_argument("--out-dir", required=True, help="folder for <name>.sample<k>.case_ids.json")
    parser.add_argument("--order-file", help="local copy of the order file (default: download)")
    parser.add_argument("--dataset-file", help="local copy of the dataset file (default: download)")
    parser.add_argument("--cache-dir", help="download cache (default: the edit-runner cache)")
    parser.add_argument(
        "--no-verify", action="store_true", help="accept a local order file with another sha256"
    )
    args = parser.parse_args(argv)
    try:
        paths = export_case_ids(
            args.name,
            args.samples,
            args.out_dir,
            args.order_file,
            args.dataset_file,
            args.cache_dir,
            verify=not args.no_verify,
        )
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
