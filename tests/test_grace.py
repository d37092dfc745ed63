"""GRACE: codebook rules by hand, edits flip predictions, unrelated prompts exactly unchanged, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from edit_runner.data.record import EditRecord, RecordKind
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.methods.grace import SPLIT_MARGIN, GraceEditor
from edit_runner.editing.wrappers import check_combination, wrapper_registry
from edit_runner.errors import ConfigError
from edit_runner.models.padding import pad_id_of
from edit_runner.models.scoring import encode_texts, forward_logits
from edit_runner.models.tokens import target_token_ids
from edit_runner.run_state import flatten_tensors
from editing_helpers import algo_config, make_editor

BARE = ContextTemplates(groups=(("{}",),))
EDITS = [
    EditRecord(case_id=str(i), subject=s, prompt="{} went to the", target_new=t, target_true="park", kind=RecordKind.zsre)
    for i, (s, t) in enumerate([("Lily", "moon"), ("Tom", "shop"), ("Ben", "ball")])
]
UNRELATED = ["Once upon a time", "The sun was hot and", "She liked to play with her"]


def codebook(**overrides) -> GraceEditor:
    return GraceEditor(algo_config("grace", **overrides))


def test_new_key_far_from_every_entry_gets_its_own_entry_with_eps_init():
    editor = codebook(eps_init=1.0)
    assert editor.update_codebook(torch.tensor([0.0, 0.0]), torch.zeros(3), torch.tensor([5])) == 0
    # distance 2.5 > eps_init + eps_0 = 2: no overlap
    assert editor.update_codebook(torch.tensor([2.5, 0.0]), torch.ones(3), torch.tensor([5])) == 1
    assert editor.radii.tolist() == [1.0, 1.0]
    assert editor.labels.tolist() == [[5], [5]]
    assert torch.equal(editor.values, torch.tensor([[0.0] * 3, [1.0] * 3]))  # warm init = current output


def test_same_label_within_reach_expands_the_radius_to_cover_the_key():
    editor = codebook(eps_init=1.0)
    editor.update_codebook(torch.tensor([0.0, 0.0]), torch.zeros(3), torch.tensor([5, 6]))
    # distance 1.5: overlaps (<= 1 + 1) and the label matches → eps_0 = 1.5, no new entry
    assert editor.update_codebook(torch.tensor([0.0, 1.5]), torch.ones(3), torch.tensor([5, 6])) == 0
    assert editor.radii.tolist() == [1.5]
    # a key already inside keeps the radius
    assert editor.update_codebook(torch.tensor([0.0, 0.5]), torch.ones(3), torch.tensor([5, 6])) == 0
    assert editor.radii.tolist() == [1.5]


def test_conflicting_label_splits_both_radii_at_half_the_distance():
    editor = codebook(eps_init=1.0)
    editor.update_codebook(torch.tensor([0.0, 0.0]), torch.zeros(3), torch.tensor([5]))
    assert editor.update_codebook(torch.tensor([1.2, 0.0]), torch.ones(3), torch.tensor([7, 8])) == 1
    assert editor.radii[1].item() == pytest.approx(0.6)
    assert editor.radii[0].item() == pytest.approx(0.6 - SPLIT_MARGIN, abs=1e-7)
    assert editor.labels.tolist() == [[5, -1], [7, 8]]  # −1 pads the shorter label


def scores(loaded, prompts: list[str], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each prompt+target row and the argmax at the target positions."""
    rows = [p + t for p, t in zip(encode_texts(loaded.tokenizer, prompts), targets)]
    logits = forward_logits(loaded.model, rows, pad_id_of(loaded.tokenizer))
    return logits, logits.argmax(dim=-1)


@pytest.fixture()
def grace_editors(stories260k):
    made = []

    def build(**overrides):
        editor = make_editor(stories260k, algo_config("grace", layers=[3], value_steps=40, value_lr=0.5, **overrides), BARE, None)
        made.append(editor.direct)
        return editor

    yield build
    for direct in made:
        direct.detach()


def test_edits_flip_predictions_and_leave_unrelated_prompts_exactly_unchanged(stories260k, grace_editors, one_thread):
    loaded = stories260k
    tok = loaded.tokenizer
    targets = [target_token_ids(tok, r.target_new) for r in EDITS]
    prompts = [r.rewrite_prompt for r in EDITS]
    plain = [[1]] * len(UNRELATED)
    _, before = scores(loaded, prompts, targets)
    logits_before, _ = scores(loaded, UNRELATED, plain)
    lengths = [len(p) for p in encode_texts(tok, prompts)]

    def hits(argmax: torch.Tensor) -> list[bool]:
        return [argmax[i, n - 1 : n - 1 + len(t)].tolist() == t for i, (n, t) in enumerate(zip(lengths, targets))]

    assert not any(hits(before))
    editor = grace_editors()
    editor.edit(EDITS)
    _, after = scores(loaded, prompts, targets)
    assert all(hits(after))
    logits_after, _ = scores(loaded, UNRELATED, plain)
    assert torch.equal(logits_after, logits_before)
    # the unrelated prompts' keys really are outside every radius (the hook's own rule, recomputed)
    direct = editor.direct
    keys = []
    handle = direct.module.register_forward_hook(lambda _m, args, _out: keys.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        scores(loaded, UNRELATED, plain)
    finally:
        handle.remove()
    dist = torch.cdist(keys[0].float(), direct.keys)
    assert bool((dist > direct.radii).all())


def test_state_dict_round_trip_gives_identical_outputs_and_identical_further_edits(stories260k, grace_editors, tmp_path, one_thread):
    loaded = stories260k
    first = grace_editors()
    first.edit(EDITS[:2])
    state = first.state_dict()
    path = tmp_path / "grace.safetensors"
    save_file(flatten_tensors(state), str(path))
    prompts = [r.rewrite_prompt for r in EDITS] + UNRELATED
    targets = [target_token_ids(loaded.tokenizer, r.target_new) for r in EDITS] + [[1]] * len(UNRELATED)
    expected, _ = scores(loaded, prompts, targets)
    first.direct.detach()
    unedited, _ = scores(loaded, prompts, targets)
    assert not torch.equal(unedited, expected)

    second = grace_editors()
    loaded_state = load_file(str(path))
    second.load_state_dict({"solver": {k[len("solver."):]: v for k, v in loaded_state.items() if k.startswith("solver.")}, "terms": {}})
    second.direct.attach(loaded.model)
    resumed, _ = scores(loaded, prompts, targets)
    assert torch.equal(resumed, expected)

    second.edit(EDITS[2:])
    first.direct.attach(loaded.model)
    second.direct.detach()
    first.edit(EDITS[2:])
    for name, tensor in first.direct.state_dict().items():
        assert torch.equal(tensor, second.direct.state_dict()[name]), name


def test_every_wrapper_is_refused_because_grace_has_no_spread_stage():
    spec = algorithm_spec("grace")
    assert spec.direct_type is GraceEditor and not spec.has_spread and not spec.capabilities
    for name in wrapper_registry().names():
        with pytest.raises(ConfigError, match=f"wrapper={name} cannot wrap algo=grace: it has no spread stage"):
            check_combination(spec, [name])


def test_bad_value_init_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"algo.value_init='hot'.*warm, cold"):
        codebook(value_init="hot")
