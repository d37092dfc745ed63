"""The optimization stage shared by every locate-then-edit method (SPEC C §1.5, §2, §4, §7.1).

For a chunk of records at once, a free vector δ per record (and per site) is added to the output of
the site module(s) at each prompt's subject-last token, and optimized with Adam on
``NLL(new object | prefixed prompts) + KL + weight decay`` with a norm clamp. Adam is element-wise,
so optimizing the stacked δs of several records equals optimizing each alone; a record that meets a
stop rule is frozen. Wrappers plug in as extra loss rows (NA/NAP) and stop rules (MPES).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.errors import OptimizationError
from edit_runner.models.devices import input_device
from edit_runner.models.hooks import trace
from edit_runner.models.partial_forward import lower_block_cache, replaying
from edit_runner.models.sampling import cache_keyword
from edit_runner.models.tokens import (
    EncodedBatch,
    FilledPrompt,
    encode_prompts,
    fill_template,
    target_token_ids,
)

LOSS_THRESHOLD = 5e-2
KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class LossRow:
    """One prompt of the optimization batch: which record's δ it sees, where, and what it must predict."""

    record: int
    prompt: FilledPrompt
    target: tuple[int, ...]
    kind: str  # "rewrite" | "kl" | "neighbor"
    template_index: int = 0
    norm_len: int = 1


@dataclass
class OptimizationSettings:
    """Hyper-parameters of the optimization stage."""

    sites: tuple[str, ...]
    num_steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    nll_loss_factor: float = 1.0
    pmet_rule: bool = False
    neighbor_weight: float = 1.0
    pooled_neighbors: bool = False
    chunk: int = 16
    reuse_prefix: bool = True  # cache the tokens before each subject-last token (exact; see _StepPass)
    reuse_lower: bool = True  # run the blocks below the sites once, not every step (exact; models/partial_forward.py)


@dataclass
class StepStats:
    """Per-record quantities of one optimization step, handed to the stop rules."""

    step: int
    rewrite_nll: torch.Tensor
    all_argmax: torch.Tensor
    prefixed_all_argmax: torch.Tensor
    kl: torch.Tensor
    rewrite_prob: torch.Tensor  # mean over the rewriting prompts of exp(−NLL_i) (ENCORE's MPES probability)


class StopRule(Protocol):
    """A stop rule of the optimization stage (e.g. MPES); fresh state per chunk via :meth:`reset`."""

    def reset(self, num_records: int) -> None:
        """Start a new chunk of ``num_records`` records."""

    def should_stop(self, stats: StepStats) -> torch.Tensor:
        """Boolean per record: stop now with the current δ."""


class ExtraRows(Protocol):
    """A loss term that contributes extra prompts (neighbor-assisted editing)."""

    def rows(self, records: list[EditRecord], templates: ContextTemplates, tokenizer) -> list[LossRow]:
        """Extra loss rows for ``records`` (``LossRow.record`` indexes into ``records``)."""


@dataclass
class TargetResult:
    """Target vectors and optimization statistics for a list of records (columns = records)."""

    z: dict[str, torch.Tensor]
    h_init: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    steps: torch.Tensor
    init_nll: torch.Tensor
    final_nll: torch.Tensor
    extra: dict[str, object] = field(default_factory=dict)


def rewrite_rows(records: list[EditRecord], templates: ContextTemplates, tokenizer, *, with_kl: bool = True) -> list[LossRow]:
    """The rewriting prompts (every template × record, target prefix appended) and the KL prompts."""
    rows: list[LossRow] = []
    for r, record in enumerate(records):
        target = tuple(target_token_ids(tokenizer, record.target_new))
        for t, template in enumerate(templates.flat):
            prompt = fill_template(template.replace("{}", record.prompt), record.subject)
            rows.append(LossRow(r, prompt, target, "rewrite", t, len(target)))
        if with_kl:
            rows.append(LossRow(r, fill_template(KL_PROMPT, record.subject), (), "kl", 0, 1))
    return rows


class _DeltaInjector:
    """Adds δ[site][record] at each row's subject-last token of the site outputs; records h_init."""

    def __init__(self, delta: torch.Tensor, sites: tuple[str, ...], row_record: torch.Tensor, lookup: torch.Tensor, first_rows: torch.Tensor):
        self.delta = delta
        self.site_index = {name: i for i, name in enumerate(sites)}
        self.row_record = row_record
        self.lookup = lookup
        self.first_rows = first_rows
        self.h_init: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        if name not in self.h_init:
            at = self.first_rows.to(hidden.device)  # the site's device (layers may live on other devices)
            self.h_init[name] = hidden[at, self.lookup.to(hidden.device)[at]].detach().float().clone()
        values = self.delta[self.site_index[name]][self.row_record].to(device=hidden.device, dtype=hidden.dtype)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden.index_put((rows, self.lookup.to(hidden.device)), values, accumulate=True)


def _target_positions(rows: list[LossRow], lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened (row, position, token) triples of every target token (position predicts the token)."""
    row_idx, pos_idx, tok_ids, owner = [], [], [], []
    for i, row in enumerate(rows):
        length = int(lengths[i])
        count = len(row.target)
        for j, token in enumerate(row.target):
            row_idx.append(i)
            pos_idx.append(length - count + j)
            tok_ids.append(token)
            owner.append(i)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)
    return as_long(row_idx), as_long(pos_idx), as_long(tok_ids), as_long(owner)


def _segment_mean(values: torch.Tensor, segments: torch.Tensor, num: int) -> torch.Tensor:
    total = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(0, segments, values)
    count = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(0, segments, torch.ones_like(values))
    return total / count.clamp(min=1)


def _segment_all(flags: torch.Tensor, segments: torch.Tensor, num: int) -> torch.Tensor:
    bad = torch.zeros(num, dtype=torch.long, device=flags.device).index_add(0, segments, (~flags).long())
    return bad == 0


#: ``progress(records_done, step, loss)``: called once per Adam step; ``loss`` is the detached per-record
#: loss tensor (convert it only when shown: the conversion is a host sync).
TargetProgress = Callable[[int, int, torch.Tensor], None]


@dataclass
class _RowSet:
    """Index tensors of the rows a step runs: per row, per target token, per KL row."""

    record: torch.Tensor
    lookup: torch.Tensor
    norm_len: torch.Tensor
    is_rewrite: torch.Tensor
    is_neighbor: torch.Tensor
    tok_row: torch.Tensor
    tok_pos: torch.Tensor
    tok_id: torch.Tensor
    tok_rewrite: torch.Tensor
    tok_prefixed: torch.Tensor
    kl_rows: torch.Tensor
    kl_index: torch.Tensor

    def select(self, where: torch.Tensor) -> _RowSet:
        """The subset of rows ``where`` (indices into this set), renumbered."""
        renumber = torch.full_like(self.record, -1)
        renumber[where] = torch.arange(len(where), device=where.device)
        tokens = renumber[self.tok_row] >= 0
        kl = renumber[self.kl_rows] >= 0
        return _RowSet(
            *(t[where] for t in (self.record, self.lookup, self.norm_len, self.is_rewrite, self.is_neighbor)),
            renumber[self.tok_row[tokens]],
            *(t[tokens] for t in (self.tok_pos, self.tok_id, self.tok_rewrite, self.tok_prefixed)),
            renumber[self.kl_rows[kl]],
            self.kl_index[kl],
        )


class _StepPass:
    """How each Adam step runs the batch: the full rows, or only the tokens from each row's subject-last
    token on, after a KV cache of the tokens before it (nothing there depends on δ in a causal LM).

    ``lookup`` and ``shift`` map full-row positions into the step's inputs: position ``p`` of row
    ``i`` is column ``p - shift[i]``; ``lookup`` is the subject-last column.
    """

    def __init__(self, base: torch.nn.Module, batch: EncodedBatch, reuse_prefix: bool) -> None:
        self.base = base
        key = cache_keyword(base)
        self.cache_key = key if key in inspect.signature(base.forward).parameters else None
        last = batch.subject_last
        width = int(last.max()) if self.cache_key is not None and reuse_prefix else 0
        if width == 0:
            self.inputs = batch.model_inputs()
            self.lookup, self.shift, self.prefix_cache = last, torch.zeros_like(last), None
            return
        device = batch.input_ids.device
        pad = batch.input_ids[0, 0].new_zeros(())
        # prefixes, left padded to ``width``: column c holds token c - (width - last) of the row
        source = torch.arange(width, device=device)[None, :] - (width - last)[:, None]
        valid = source >= 0
        prefix_ids = torch.where(valid, batch.input_ids.gather(1, source.clamp(min=0)), pad)
        with torch.no_grad():
            out = base(input_ids=prefix_ids, attention_mask=valid.long(), position_ids=source.clamp(min=0), use_cache=True)
        self.prefix_cache = out[key]
        # the rest of each row, right padded; positions continue the row's real positions
        tail = int((batch.lengths - last).max())
        position = last[:, None] + torch.arange(tail, device=device)[None, :]
        real = position < batch.lengths[:, None]
        rest_ids = torch.where(real, batch.input_ids.gather(1, position.clamp(max=batch.input_ids.shape[1] - 1)), pad)
        self.inputs = {
            "input_ids": rest_ids,
            "attention_mask": torch.cat([valid, real], dim=1).long(),
            "position_ids": torch.where(real, position, last[:, None]),
        }
        self.lookup, self.shift = torch.zeros_like(last), last

    def select(self, where: torch.Tensor) -> None:
        """Keep only rows ``where`` from now on (records that stopped leave the batch)."""
        self.inputs = {k: v[where] for k, v in self.inputs.items()}
        if self.prefix_cache is not None:
            self.prefix_cache.batch_select_indices(where.cpu())  # the cache spans every layer's device

    def hidden(self) -> torch.Tensor:
        """Last hidden states of one step (the prefix cache is copied, so it never grows across steps)."""
        extra = {} if self.prefix_cache is None else {self.cache_key: copy.deepcopy(self.prefix_cache), "use_cache": True}
        return self.base(**self.inputs, **extra).last_hidden_state


def _optimize_chunk(model, tokenizer, records, templates, settings, extra_rows, stop_rules, progress=None, done=0) -> TargetResult:
    device = input_device(model)
    m = len(records)
    rows = rewrite_rows(records, templates, tokenizer)
    for term in extra_rows:
        rows += term.rows(records, templates, tokenizer)
    batch = encode_prompts(tokenizer, [r.prompt for r in rows], [list(r.target[:-1]) for r in rows]).to(device)
    kinds = [r.kind for r in rows]
    first_rows = torch.tensor([next(i for i, r in enumerate(rows) if r.record == k and r.kind == "rewrite" and r.template_index == 0) for k in range(m)], device=device)
    as_tensor = lambda values: torch.tensor(values, device=device)
    row_i, pos_i, tok_i, _ = (t.to(device) for t in _target_positions(rows, batch.lengths.cpu()))
    is_rewrite = as_tensor([k == "rewrite" for k in kinds])
    is_prefixed = as_tensor([r.kind == "rewrite" and r.template_index > 0 for r in rows])
    kl_rows = as_tensor([i for i, k in enumerate(kinds) if k == "kl"])
    has_neighbors = "neighbor" in kinds
    has_prefixed = any(r.kind == "rewrite" and r.template_index > 0 for r in rows)

    step_pass = _StepPass(model.base_model, batch, settings.reuse_prefix)
    lower = lower_block_cache(model, settings.sites) if settings.reuse_lower else None
    if lower is not None:  # nothing below the sites depends on δ: run it once
        lower.capture(step_pass.hidden)
    rs = _RowSet(
        record=as_tensor([r.record for r in rows]),
        lookup=step_pass.lookup,
        norm_len=as_tensor([float(r.norm_len) for r in rows]),
        is_rewrite=is_rewrite,
        is_neighbor=as_tensor([k == "neighbor" for k in kinds]),
        tok_row=row_i,
        tok_pos=pos_i - step_pass.shift[row_i],
        tok_id=tok_i,
        tok_rewrite=is_rewrite[row_i],
        tok_prefixed=is_prefixed[row_i],
        kl_rows=kl_rows,
        kl_index=torch.arange(len(kl_rows), device=device),
    )
    hidden_size = model.config.hidden_size
    delta = torch.zeros((len(settings.sites), m, hidden_size), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    injector = _DeltaInjector(delta, settings.sites, rs.record, rs.lookup, first_rows)
    lm_head = model.get_output_embeddings()

    for rule in stop_rules:
        rule.reset(m)
    active = torch.ones(m, dtype=torch.bool, device=device)
    running = m
    steps = torch.zeros(m, dtype=torch.long, device=device)
    init_nll = torch.zeros(m, device=device)
    final_nll = torch.zeros(m, device=device)
    nll_weight = torch.full((m,), settings.nll_loss_factor, device=device)
    kl_init = h_norms = None
    for step in range(settings.num_steps):
        with replaying(lower), trace(model, settings.sites, edit_output=injector):
            hidden = step_pass.hidden().to(device)
        target_logp = torch.log_softmax(lm_head(hidden[rs.tok_row, rs.tok_pos]).float().to(device), dim=-1)
        token_logp = target_logp.gather(1, rs.tok_id[:, None]).squeeze(1)
        argmax_ok = target_logp.argmax(dim=-1) == rs.tok_id
        row_sum = torch.zeros(len(rs.record), device=device).index_add(0, rs.tok_row, token_logp)
        row_nll = -row_sum / rs.norm_len
        rewrite_nll = _segment_mean(row_nll[rs.is_rewrite], rs.record[rs.is_rewrite], m)
        nll = rewrite_nll
        if has_neighbors:
            if settings.pooled_neighbors:
                pooled = rs.is_rewrite | rs.is_neighbor
                nll = _segment_mean(row_nll[pooled], rs.record[pooled], m)
            else:
                nll = rewrite_nll + settings.neighbor_weight * _segment_mean(row_nll[rs.is_neighbor], rs.record[rs.is_neighbor], m)
        kl_logp = torch.log_softmax(lm_head(hidden[rs.kl_rows, rs.lookup[rs.kl_rows]]).float().to(device), dim=-1)
        if kl_init is None:
            kl_init = kl_logp.detach().clone()
            h_norms = torch.stack([injector.h_init[s].norm(dim=-1).to(device) for s in settings.sites])
        kl_per_row = (kl_logp.exp() * (kl_logp - kl_init[rs.kl_index])).sum(dim=-1)
        kl = settings.kl_factor * torch.zeros(m, device=device).index_add(0, rs.record[rs.kl_rows], kl_per_row)
        weight_decay = settings.weight_decay * (delta.norm(dim=-1) / h_norms**2).sum(dim=0)
        loss = nll_weight * nll + kl + weight_decay
        current = rewrite_nll.detach()
        reported = nll.detach() if settings.pooled_neighbors else current  # RUOE's perplexity pools the neighbour rows
        if step == 0:
            init_nll = reported.clone()
        final_nll = torch.where(active, reported, final_nll)
        steps = torch.where(active, step, steps)

        token_record = rs.record[rs.tok_row]
        all_argmax = _segment_all(argmax_ok[rs.tok_rewrite], token_record[rs.tok_rewrite], m)
        prefixed_ok = _segment_all(argmax_ok[rs.tok_prefixed], token_record[rs.tok_prefixed], m) if has_prefixed else all_argmax
        rewrite_prob = _segment_mean(torch.exp(-row_nll[rs.is_rewrite].detach()), rs.record[rs.is_rewrite], m)
        stats = StepStats(step, current, all_argmax, prefixed_ok, kl.detach(), rewrite_prob)
        stop = loss.detach() < LOSS_THRESHOLD
        for rule in stop_rules:
            stop |= rule.should_stop(stats).to(device)
        if settings.pmet_rule:
            stop |= all_argmax & (kl.detach() <= 0.01)
            nll_weight = torch.where(all_argmax, 0.1 * settings.nll_loss_factor, settings.nll_loss_factor)
        if step == settings.num_steps - 1:
            stop = torch.ones_like(stop)
        active &= ~stop
        if progress is not None:
            progress(done, step, loss.detach())
        finite, now_running = torch.stack((torch.isfinite(loss.detach()).all().long(), active.sum())).tolist()  # the one host sync of a step
        if not finite:
            _diverged(records, loss)
        if not now_running:
            break
        if now_running < running:  # stopped records leave the batch: their rows no longer affect any loss
            where = torch.nonzero(active[rs.record]).flatten()
            rs = rs.select(where)
            step_pass.select(where)
            if lower is not None:
                lower.select(where)
            injector.row_record, injector.lookup = rs.record, rs.lookup
            running = now_running
        (loss * active).sum().backward()
        before = delta.detach().clone()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            delta.copy_(torch.where(active[None, :, None], delta, before))
            limit = settings.clamp_norm_factor * h_norms
            norms = delta.norm(dim=-1)
            delta.mul_(torch.clamp(limit / norms.clamp(min=1e-12), max=1.0)[..., None])

    final_delta = delta.detach()
    return TargetResult(
        z={s: (injector.h_init[s] + final_delta[i].to(injector.h_init[s].device)).T.contiguous() for i, s in enumerate(settings.sites)},
        h_init={s: injector.h_init[s].T.contiguous() for s in settings.sites},
        delta={s: final_delta[i].to(injector.h_init[s].device).T.contiguous() for i, s in enumerate(settings.sites)},
        steps=steps.cpu(),
        init_nll=init_nll.cpu(),
        final_nll=final_nll.cpu(),
    )


def _diverged(records: list[EditRecord], loss: torch.Tensor) -> None:
    bad = [records[i].case_id for i in torch.nonzero(~torch.isfinite(loss.detach())).flatten().tolist()]
    raise OptimizationError(
        f"target optimization diverged (NaN/inf loss) for record case_id={', '.join(map(str, bad))}; "
        "lower algo.v_lr or raise algo.v_weight_decay"
    )


def optimize_targets(
    model: torch.nn.Module,
    tokenizer,
    records: list[EditRecord],
    templates: ContextTemplates,
    settings: OptimizationSettings,
    extra_rows: tuple[ExtraRows, ...] = (),
    stop_rules: tuple[StopRule, ...] = (),
    progress: TargetProgress | None = None,
) -> TargetResult:
    """Optimize the target vectors of ``records`` in chunks of ``settings.chunk`` records.

    Returns ``z = h_init + δ`` per site (``d × n``), the number of Adam steps each record used,
    and the rewrite NLL at the first (δ = 0) and last evaluated step (for p̄ of iterative editing;
    pooled with the neighbour rows under NA's pooled weighting, as RUOE reports it).
    """
    parts = [
        _optimize_chunk(model, tokenizer, records[i : i + settings.chunk], templates, settings, extra_rows, stop_rules, progress, i)
        for i in range(0, len(records), settings.chunk)
    ]
    cat = lambda key: {s: torch.cat([getattr(p, key)[s] for p in parts], dim=1) for s in settings.sites}
    return TargetResult(
        z=cat("z"),
        h_init=cat("h_init"),
        delta=cat("delta"),
        steps=torch.cat([p.steps for p in parts]),
        init_nll=torch.cat([p.init_nll for p in parts]),
        final_nll=torch.cat([p.final_nll for p in parts]),
    )


@torch.no_grad()
def rewrite_nll(
    model: torch.nn.Module,
    tokenizer,
    records: list[EditRecord],
    templates: ContextTemplates,
    extra_rows: tuple[ExtraRows, ...] = (),
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-record mean (over rewriting prompts) per-token NLL of the new object with δ = 0.

    This is the quantity behind p̂_k of iterative editing (SPEC B §9): the same prompts and
    normalisation as the optimization stage, measured on the current weights. ``extra_rows``
    (NA with the pooled weighting) adds their rows to each record's mean, as RUOE's perplexity
    pools the neighbour rows with the rewriting rows.
    """
    device = input_device(model)
    rows = rewrite_rows(records, templates, tokenizer, with_kl=False)
    for term in extra_rows:
        rows += term.rows(records, templates, tokenizer)
    lm_head = model.get_output_embeddings()
    row_nll = torch.zeros(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = encode_prompts(tokenizer, [r.prompt for r in chunk], [list(r.target[:-1]) for r in chunk]).to(device)
        row_i, pos_i, tok_i, _ = (t.to(device) for t in _target_positions(chunk, batch.lengths.cpu()))
        hidden = model.base_model(**batch.model_inputs()).last_hidden_state.to(device)
        logp = torch.log_softmax(lm_head(hidden[row_i, pos_i]).float().to(device), dim=-1).gather(1, tok_i[:, None]).squeeze(1)
        sums = torch.zeros(len(chunk), device=device).index_add(0, row_i, logp)
        row_nll[start : start + len(chunk)] = (-sums / torch.tensor([float(r.norm_len) for r in chunk], device=device)).cpu()
    record_of = torch.tensor([r.record for r in rows])
    return _segment_mean(row_nll, record_of, len(records))
