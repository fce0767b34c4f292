"""Our own decode loop for a static batch.

We do not call `model.generate` here because it keeps computing every row until the whole batch is
done: a row that hit EOS or its own `max_new_tokens` still runs through the model at every step (its
output is only masked), so a batch costs rows x its largest limit. This loop removes every row from
the inputs, the attention mask and the KV cache the step it finishes (EOS, own limit, stop string).

Prefill and decode are cut differently. Rows of similar prompt length are prefilled together
(left-padded, at most `max_padding` of their positions wasted), very different ones separately; then
all rows of the batch decode together, their caches left-aligned to the batch's longest prompt. A
decode step costs about the same for 8 rows as for 64, a prefill costs what its padded size is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.engine.batching import prefill_groups
from runner.engine.kv_cache import SlotCache, full_cache
from runner.engine.prefix import last_logits
from runner.engine.sampling import Sampler
from runner.engine.sequence import Sequence, Stopper
from runner.engine.types import stepped


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [rows, longest] with every prompt aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


class DecodeLoop:
    """Generates a batch of sequences: prefill by length groups, then one token per step for live rows."""

    def __init__(self, model, sampler: Sampler, stopper: Stopper, pad_id: int, max_padding: float):
        self.model = model
        self.sampler = sampler
        self.stopper = stopper
        self.pad_id = pad_id
        self.max_padding = max_padding
        self._last_logits = last_logits(model)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> None:
        """Append tokens to every sequence until each is finished (seqs sorted longest prompt first)."""
        lengths = self._cached_lengths(seqs)
        width = max(lengths)
        cache = SlotCache(self.model.config, width + max(s.request.max_new_tokens for s in seqs))
        logits = self._prefill(seqs, width, cache)
        mask = self._mask(lengths, width, cache.layers[0].capacity)
        active, length = list(seqs), width
        while True:
            chosen = self.sampler.choose_rows(logits, active).tolist()
            finished = [
                i
                for i, (seq, token) in enumerate(zip(active, chosen, strict=True))
                if self._append(seq, token)
            ]
            for slot in reversed(finished):
                self._remove(slot, active, mask, cache)
            if not active:
                return
            rows = len(active)
            mask[:rows, length] = 1
            length += 1
            step = torch.tensor([[s.tokens[-1]] for s in active], device=mask.device)
            positions = torch.tensor([[s.position - 1] for s in active], device=mask.device)
            logits = self._forward(step, mask[:rows, :length], positions, cache)
            stepped(s.request for s in active)

    def _cached_lengths(self, seqs: list[Sequence]) -> list[int]:
        """How many prompt columns each row keeps in the batch's cache: its whole prompt here (a
        subclass may keep a shared prefix elsewhere, runner.engine.cascade)."""
        return [len(s.request.prompt_ids) for s in seqs]

    def _prefill(self, seqs: list[Sequence], width: int, cache: SlotCache) -> torch.Tensor:
        """Prefill each length group on its own cache, then load them all, left-padded to `width`."""
        lengths = [len(s.request.prompt_ids) for s in seqs]
        logits, layers = [], []
        for start, stop in prefill_groups(lengths, self.max_padding):
            ids, mask = left_pad(
                [s.request.prompt_ids for s in seqs[start:stop]], self.pad_id, self.model.device
            )
            part = full_cache(self.model.config)
            # Under left padding a row's positions start at its first real token, not at column 0.
            logits.append(self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), part))
            stepped(s.request for s in seqs[start:stop])
            pad = width - ids.shape[1]
            layers.append(
                [
                    (F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0)))
                    for layer in part.layers
                ]
            )
        cache.fill(
            [
                (torch.cat([g[i][0] for g in layers]), torch.cat([g[i][1] for g in layers]))
                for i in range(len(layers[0]))
            ]
        )
        return torch.cat(logits)

    def _mask(self, lengths: list[int], width: int, capacity: int) -> torch.Tensor:
        """Attention mask buffer [rows, capacity]: the rows' `lengths` cached prompt columns
        right-aligned at `width`, decode columns after."""
        mask = torch.zeros((len(lengths), capacity), dtype=torch.long, device=self.model.device)
        for row, length in enumerate(lengths):
            mask[row, width - length : width] = 1
        return mask

    def _remove(self, slot: int, active: list[Sequence], mask: torch.Tensor, cache: SlotCache) -> None:
        """Drop a finished row the way the cache does: the last live row takes its slot."""
        last = len(active) - 1
        if slot != last:
            mask[slot] = mask[last]
            active[slot] = active[last]
        active.pop()
        cache.remove(slot)

    def _append(self, seq: Sequence, token: int) -> bool:
        seq.tokens.append(token)
        return self.stopper.update(seq)

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """Float logits of each row's last position."""
        return self._last_logits(ids, mask, positions, cache)
