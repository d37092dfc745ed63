"""Keys and site activations at the subject's last token (SPEC C §1.3–1.4), batched over records and templates."""

from __future__ import annotations

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.models.devices import input_device
from edit_runner.models.hooks import run_until_stop, trace
from edit_runner.models.tokens import FilledPrompt, encode_prompts, fill_template


def filled_prompts(records: list[EditRecord], template: str) -> list[FilledPrompt]:
    """Each record's prompt inside a context template, with the subject filled in."""
    return [fill_template(template.replace("{}", record.prompt), record.subject) for record in records]


@torch.no_grad()
def activations_at_subject(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[FilledPrompt],
    module: str,
    *,
    which: str = "input",
    batch_size: int = 64,
) -> torch.Tensor:
    """Input (``which="input"``) or output of ``module`` at each prompt's subject-last token, ``n × d``."""
    device = input_device(model)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, prompts[start : start + batch_size]).to(device)
        with trace(model, [module], inputs=which == "input", outputs=which == "output", stop_after=module) as tr:
            run_until_stop(model, **batch.model_inputs())
        captured = tr.inputs[module] if which == "input" else tr.outputs[module]
        at = captured.device  # the traced module's device (a layer of a multi-device model may live elsewhere)
        rows.append(captured[torch.arange(len(batch.subject_last), device=at), batch.subject_last.to(at)].float())
    return torch.cat(rows, dim=0)


def compute_keys(
    model: torch.nn.Module,
    tokenizer,
    records: list[EditRecord],
    module: str,
    templates: ContextTemplates,
    batch_size: int = 64,
) -> torch.Tensor:
    """Keys ``d_in × n``: the rewrite module's input at the subject-last token, averaged within each
    template group and then over groups (ROME: one flat group; MEMIT family: ½·(bare + mean of prefixes))."""
    group_means = []
    for group in templates.groups:
        prompts = [p for template in group for p in filled_prompts(records, template)]
        acts = activations_at_subject(model, tokenizer, prompts, module, which="input", batch_size=batch_size)
        group_means.append(acts.view(len(group), len(records), -1).mean(dim=0))
    return torch.stack(group_means).mean(dim=0).T.contiguous()


def bare_activations(
    model: torch.nn.Module,
    tokenizer,
    records: list[EditRecord],
    module: str,
    which: str,
    batch_size: int = 64,
) -> torch.Tensor:
    """``module``'s input or output at the subject-last token of the bare edit prompts, ``d × n``."""
    prompts = filled_prompts(records, "{}")
    return activations_at_subject(model, tokenizer, prompts, module, which=which, batch_size=batch_size).T.contiguous()
