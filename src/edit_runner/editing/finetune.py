"""FT and FT-C baselines (SPEC C §3): Adam on the rewrite module(s), last-token loss, optional L∞ box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edit_runner.data.record import EditRecord
from edit_runner.models.devices import input_device
from edit_runner.models.tokens import target_token_ids

STEP_LOSS_THRESHOLD = 1e-2


@dataclass(frozen=True)
class FinetuneSettings:
    """FT hyper-parameters; ``norm_constraint`` (ε) set → FT-C."""

    lr: float
    num_steps: int
    norm_constraint: float | None
    weight_decay: float
    batch_size: int


def _last_token_loss(model, tokenizer, records: list[EditRecord], device) -> torch.Tensor:
    prompts = [r.rewrite_prompt for r in records]
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    targets = [target_token_ids(tokenizer, r.target_new) for r in records]
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    last = mask.sum(dim=1) - 1
    logp = torch.log_softmax(logits[torch.arange(len(records), device=device), last].float(), dim=-1)
    losses = [-logp[i, torch.tensor(t, device=device)].mean() for i, t in enumerate(targets)]
    return torch.stack(losses).mean()


def finetune(model: torch.nn.Module, tokenizer, records: list[EditRecord], params: list[torch.nn.Parameter], settings: FinetuneSettings) -> dict[str, float]:
    """Fine-tune ``params`` on the records; FT-C clamps every weight to ``[W0 − ε, W0 + ε]`` after each step.

    Every target token is scored from the last prompt token's distribution (bag of tokens), as the
    reference does. Target ids follow SPEC B §1 (``tok(" " + target)`` without special tokens, one
    list per record, no padding). The reference (kmeng01 ``execute_ft``) tokenises the chunk's targets
    with ``tok(targets, padding=True)`` and masks ``!= unk``: on GPT-2 (no BOS; pad = unk) that is the
    same, but a Llama tokenizer prepends BOS and pads with EOS (both ≠ unk), which the reference then
    also trains as targets — the one cause of its different update direction on Llama models
    (tests/test_metric_definitions.py checks both against the reference loop written out). Returns
    the number of Adam steps and the last epoch's mean loss.
    """
    device = input_device(model)
    tokenizer.padding_side = "right"
    originals = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = 0
    epoch_loss = float("nan")
    try:
        for _ in range(settings.num_steps):
            losses = []
            for start in range(0, len(records), settings.batch_size):
                optimizer.zero_grad()
                loss = _last_token_loss(model, tokenizer, records[start : start + settings.batch_size], device)
                losses.append(loss.item())
                if losses[-1] >= STEP_LOSS_THRESHOLD:
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    if settings.norm_constraint is not None:
                        eps = settings.norm_constraint
                        with torch.no_grad():
                            for p, p0 in zip(params, originals):
                                p.copy_(torch.clamp(p, min=p0 - eps, max=p0 + eps))
            epoch_loss = sum(losses) / len(losses)
            if epoch_loss < STEP_LOSS_THRESHOLD:
                break
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return {"ft_steps": float(steps), "ft_final_loss": epoch_loss}
