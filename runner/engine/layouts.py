"""Cache layouts of the padded decode loop: how a batch's prompts get into its KV cache.

The decode loop (runner.engine.decode) asks its layout to start a batch and gets back a `Batch`,
which owns everything kept per row while the rows decode: the sequences, the KV cache, the attention
mask and each row's cached length; a finished row leaves by one `Batch.remove(slot)`.

- `PlainLayout`: every row's cache holds its whole prompt, rows of similar length prefilled together
  (left-padded, at most `max_padding` of their positions wasted), all rows then decoding together,
  their caches left-aligned to the batch's longest prompt.
- `SharedLayout` (`batching.prefix_sharing`): each shared prompt prefix computed once
  (runner.engine.prefix); where the model allows it, its rows' attention reads that prefix from one
  copy (cascade attention, runner.engine.cascade) and a row's cache holds only its own tokens;
  elsewhere each row's cache gets a copy of the prefix. A model on which the shared path fails runs
  the plain layout from then on, with the reason logged.
"""

from __future__ import annotations

import logging

import torch

from runner.engine import cascade, ragged
from runner.engine.architecture import Architecture
from runner.engine.batching import prefill_groups
from runner.engine.forward import KV, Forward, prefill
from runner.engine.kv_cache import SlotCache
from runner.engine.prefix import SharedPrefill
from runner.engine.sequence import Sequence
from runner.errors import first_line

log = logging.getLogger(__name__)


class Batch:
    """Rows decoding together: their sequences, KV cache, attention mask and cascade groups.

    The live rows are always the first rows of every per-row buffer, so the model reads them as plain
    views; a finished row's slot is taken by the last live row (`remove`)."""

    def __init__(
        self,
        seqs: list[Sequence],
        model,
        parts: list[KV],
        lengths: list[int],
        width: int,
        logits,
        shared=None,
        layers=0,
    ):
        self.seqs = list(seqs)
        self.logits = logits  # of the last step: the next tokens are chosen from these
        self.lengths = lengths  # prompt columns each row keeps in this cache (cascade: its suffix)
        capacity = width + max(s.request.max_new_tokens for s in seqs)
        self.cache = SlotCache(model.config, capacity)
        self.cache.fill(parts, width)  # parts of consecutive rows, each right-aligned at `width`
        self.mask = torch.zeros((len(seqs), capacity), dtype=torch.long, device=model.device)
        for row, length in enumerate(lengths):
            self.mask[row, width - length : width] = 1  # right-aligned at `width`, decode columns after
        self.width = width  # the prompt columns: row r's are the last lengths[r] of them
        self.columns = width
        self.shared: cascade.Shared | None = shared  # cascade: each row's prefix group
        self._layers = layers  # the model's attention layers, each of which must reach the cascade

    def step(self, forward: Forward) -> torch.Tensor:
        """One decode step of the live rows on their last tokens: the next logits."""
        rows = len(self.seqs)
        self.mask[:rows, self.columns] = 1
        self.columns += 1
        device = self.mask.device
        ids = torch.tensor([[s.tokens[-1]] for s in self.seqs], device=device)
        positions = torch.tensor([[s.position - 1] for s in self.seqs], device=device)
        # Columns before the longest live row's first are padding in every row: neither the cache nor
        # the mask shows them (a row's real tokens and their distances stay as they were; positions are
        # given per row). Rows leave in any order, so this narrows as the longest prompts finish.
        start = self.width - max(self.lengths)
        self.cache.trim(start)
        # Rows of very different lengths: the short ones need not read the long ones' columns.
        split = ragged.split([self.width - length for length in self.lengths], self.columns, start)
        if self.shared is not None:
            self.shared.split = split
            attending = cascade.attending(self.shared, self._layers)
        else:
            attending = ragged.splitting(split)
        with attending:
            self.logits = forward(ids, self.mask[:rows, start : self.columns], positions, self.cache)
        return self.logits

    def remove(self, slot: int) -> None:
        """A finished row leaves: the last live row moves into its slot, in every per-row buffer."""
        last = len(self.seqs) - 1
        per_row = [self.seqs, self.lengths] + ([self.shared.groups] if self.shared is not None else [])
        for rows in per_row:
            rows[slot] = rows[last]
            rows.pop()
        if slot != last:
            self.mask[slot] = self.mask[last]
        self.cache.remove(slot)


class PlainLayout:
    """Every row's cache holds its whole prompt."""

    tokens_saved = 0  # prompt tokens taken from a shared prefix: none here

    def __init__(self, model, pad_id: int, max_padding: float):
        self.model = model
        self.pad_id = pad_id
        self.max_padding = max_padding

    def start(self, seqs: list[Sequence], forward: Forward) -> Batch:
        """Prefill each length group (seqs sorted longest prompt first), joined at the longest's width."""
        prompts = [s.request.prompt_ids for s in seqs]
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        # Each group's cache at its own width: the batch's cache places the groups (no padded copies).
        parts = [
            prefill(self.model, forward, prompts[start:stop], self.pad_id, max(lengths[start:stop]))
            for start, stop in prefill_groups(lengths, self.max_padding)
        ]
        logits = torch.cat([logits for logits, _ in parts])
        return Batch(seqs, self.model, [kv for _, kv in parts], lengths, width, logits)


class SharedLayout:
    """Shared prompt prefixes computed once, read from one copy (cascade) or copied into each row."""

    def __init__(self, model, pad_id: int, max_padding: float, prefill: SharedPrefill):
        self.model = model
        self.prefill = prefill
        self.plain = PlainLayout(model, pad_id, max_padding)
        self.broken: str | None = None  # why sharing was turned off, once it failed
        arch = Architecture.of(model)
        self.copying: str | None = cascade.unsupported(model, arch)  # why the prefix is copied per row
        if self.copying is not None:
            log.info(
                "prefix sharing on %s copies the prefix into each row's cache: %s",
                type(model).__name__,
                self.copying,
            )
        self._layers = len(arch.layer_types)

    @property
    def tokens_saved(self) -> int:
        """Prompt tokens not computed because their rows shared a prefix (runner.engine.prefix)."""
        return self.prefill.tokens_saved

    def start(self, seqs: list[Sequence], forward: Forward) -> Batch:
        """The batch, its shared prefixes computed once (or the plain layout's, sharing off)."""
        if self.broken is not None:
            return self.plain.start(seqs, forward)
        try:
            return self._start(seqs, forward)
        except cascade.NotCascadable as err:
            self.copying = str(err)
            log.warning(
                "cascade attention does not run on %s (%s): each row's cache copies its shared prefix from now on",
                type(self.model).__name__,
                err,
            )
            return self._start(seqs, forward)

    def _start(self, seqs: list[Sequence], forward: Forward) -> Batch:
        prompts = [s.request.prompt_ids for s in seqs]
        try:
            layout = self.prefill.layout(prompts, seqs[0].request.adapter, forward)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - a model the shared path cannot run: run it unshared
            return self._turn_off(err, seqs, forward)
        if not layout.sharing:
            return self.plain.start(seqs, forward)
        cascading = self.copying is None
        lengths = layout.cached_lengths(prompts) if cascading else [len(p) for p in prompts]
        width = max(lengths)
        try:
            parts, order = self.prefill.fill_parts(
                prompts, layout, forward, self._attend if cascading else None
            )
        except (torch.OutOfMemoryError, cascade.NotCascadable):
            raise
        except Exception as err:  # noqa: BLE001 - a model the shared path cannot run: run it unshared
            if cascading:
                raise cascade.NotCascadable(f"{type(err).__name__}: {first_line(err)}") from err
            return self._turn_off(err, seqs, forward)
        # The batch's rows in the parts' order (the decode loop keeps its own row order anyway), so
        # each part's cache is written where it goes instead of joined and reordered first.
        seqs, lengths = [seqs[i] for i in order], [lengths[i] for i in order]
        logits, kv = torch.cat([logits for logits, _ in parts]), [kv for _, kv in parts]
        if not cascading:
            return Batch(seqs, self.model, kv, lengths, width, logits)
        groups, prefixes = layout.row_groups()
        shared = cascade.Shared(prefixes, [groups[i] for i in order])
        return Batch(seqs, self.model, kv, lengths, width, logits, shared, self._layers)

    def _attend(self, groups: list[int], prefixes: list):
        return cascade.attending(cascade.Shared(prefixes, groups), self._layers)

    def _turn_off(self, err: Exception, seqs: list[Sequence], forward: Forward) -> Batch:
        self.broken = f"{type(err).__name__}: {first_line(err)}"
        log.warning(
            "prefix sharing fails on %s (%s): rows compute their whole prompts from now on",
            type(self.model).__name__,
            self.broken,
        )
        return self.plain.start(seqs, forward)
