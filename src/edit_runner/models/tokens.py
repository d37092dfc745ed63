"""Tokenization helpers: target token ids (SPEC B §1), subject-last-token indices (B §2), padded batches (B §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edit_runner.errors import DataError
from edit_runner.models.padding import right_padded


def ensure_pad_token(tokenizer) -> None:
    """Use EOS as the pad token when the tokenizer has none (SPEC B §3)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def target_token_ids(tokenizer, target: str) -> list[int]:
    """Token ids of ``" " + target`` without special tokens; a leading BOS/UNK is stripped (SPEC B §1)."""
    text = target if target.startswith(" ") else " " + target
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    while ids and ids[0] in {tokenizer.bos_token_id, tokenizer.unk_token_id} - {None}:
        ids = ids[1:]
    if not ids:
        raise DataError(f"target {target!r} tokenizes to no tokens")
    return ids


@dataclass(frozen=True)
class FilledPrompt:
    """A template filled with a subject, with the subject's character span in the text."""

    text: str
    subject_start: int
    subject_end: int


def fill_template(template: str, subject: str) -> FilledPrompt:
    """Put ``subject`` at the (last) ``{}`` of ``template``; other braces are left untouched."""
    position = template.rfind("{}")
    if position < 0:
        raise DataError(f"template {template!r} has no '{{}}' for the subject")
    text = template[:position] + subject + template[position + 2 :]
    return FilledPrompt(text=text, subject_start=position, subject_end=position + len(subject))


def find_subject(prompt: str, subject: str, case_id: str = "?") -> FilledPrompt:
    """Locate ``subject`` in an already filled prompt (its last occurrence) or raise a DataError."""
    position = prompt.rfind(subject)
    if not subject or position < 0:
        raise DataError(
            f"record case_id={case_id}: subject {subject!r} does not occur in prompt {prompt!r}; "
            "fix the subject or the prompt so the subject appears verbatim"
        )
    return FilledPrompt(text=prompt, subject_start=position, subject_end=position + len(subject))


def token_index_of_char(offsets: list[tuple[int, int]], char_index: int) -> int:
    """Index of the token whose character span contains ``char_index`` (the last such token)."""
    best = -1
    for i, (start, end) in enumerate(offsets):
        if start <= char_index < end:
            best = i
    if best < 0:
        # Byte-level tokenizers may report spans that exclude a leading space; fall back to the
        # last token starting at or before the character.
        for i, (start, end) in enumerate(offsets):
            if end > start and start <= char_index:
                best = i
    return best


@dataclass
class EncodedBatch:
    """A right-padded batch with, per row, the subject-last-token index and the prompt length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    subject_last: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> EncodedBatch:
        """Move every tensor to ``device``."""
        return EncodedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.subject_last, self.lengths)))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model(**inputs)``."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def encode_prompts(
    tokenizer,
    prompts: list[FilledPrompt],
    suffix_ids: list[list[int]] | None = None,
    pad_id: int | None = None,
) -> EncodedBatch:
    """Tokenize filled prompts (special tokens as the tokenizer adds them), append optional token suffixes,
    right-pad, and find each row's subject-last-token index from character offsets."""
    pad = pad_id if pad_id is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    rows: list[list[int]] = []
    subject_last: list[int] = []
    for i, filled in enumerate(prompts):
        enc = tokenizer(filled.text, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        index = token_index_of_char([tuple(o) for o in enc["offset_mapping"]], filled.subject_end - 1)
        if index < 0:
            raise DataError(f"could not locate the subject's last token in {filled.text!r}")
        subject_last.append(index)
        rows.append(ids + (list(suffix_ids[i]) if suffix_ids is not None else []))
    input_ids, mask, _ = right_padded(rows, pad, torch.device("cpu"))
    return EncodedBatch(
        input_ids=input_ids,
        attention_mask=mask,
        subject_last=torch.tensor(subject_last, dtype=torch.long),
        lengths=mask.sum(dim=1),
    )
