"""A preallocated KV cache for the padded decode loop, where a finished row gives its slot back at once.

transformers' `DynamicCache` grows by `torch.cat` at every step (copying the whole cache each time)
and drops rows with `batch_select_indices` (another full copy). Here each layer holds one buffer
[rows, kv_heads, capacity, head_dim] allocated once: a step writes its new column in place, and a
finished row is removed by moving the last live row into its slot, so the live rows are always the
first `rows` of the buffer and the model reads them as a plain view. Row order changes on removal;
`DecodeLoop` applies the same moves to its own row list. The view also starts at `start`, the first
column any live row uses (`SlotCache.trim`): once the batch's longest prompts have finished, the
padding columns in front of every remaining row are no longer read at each step.

Every layer keeps every column, sliding-window layers included. transformers' own cache for a sliding
layer (`DynamicSlidingWindowLayer`) keeps only the last `sliding_window - 1` columns, counted per
batch, so prefill groups of different widths would hold caches of different lengths (they could not be
joined) and a left-padded row would lose real tokens to padding columns. With full columns, the window
is applied by the model's sliding-window mask (masking_utils.sliding_window_overlay: a query sees keys
less than `sliding_window` cache columns back), which is exact here because a row's real tokens are
contiguous in its cache: left padding only ever precedes them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from runner import compat


class SlotLayer(compat.dynamic_layer_base()):
    """One layer's keys and values in a fixed-capacity buffer."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.rows = 0
        self.length = 0
        self.start = 0  # the first column the model sees (those before it are padding for every live row)

    def fill(self, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> None:
        """Start from prefilled keys and values: parts [rows_i, kv_heads, columns_i, head_dim] of
        consecutive rows, each right-aligned at column `width` (left padding before it: zeros).

        Written straight into the buffer: no padded or joined copy of the prefill's cache is made
        first. Columns past `width` are not cleared: a decode step writes each before the view
        reaches it."""
        first = parts[0][0]
        rows, heads, dim = sum(keys.shape[0] for keys, _ in parts), first.shape[1], first.shape[3]
        self._k = first.new_empty(rows, heads, self.capacity, dim)
        self._v = first.new_empty(rows, heads, self.capacity, dim)
        row = 0
        for keys, values in parts:
            count, pad = keys.shape[0], width - keys.shape[2]
            for buffer, part in ((self._k, keys), (self._v, values)):
                buffer[row : row + count, :, :pad] = 0  # masked, but read: finite values only
                buffer[row : row + count, :, pad:width] = part
            row += count
        self.dtype, self.device = first.dtype, first.device
        self.rows, self.length, self.start, self.is_initialized = rows, width, 0, True
        self._refresh()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        self._k[: self.rows, :, self.length : self.length + new] = key_states
        self._v[: self.rows, :, self.length : self.length + new] = value_states
        self.length += new
        self._refresh()
        return self.keys, self.values

    def remove(self, slot: int) -> None:
        """Drop a row: the last live row moves into its slot."""
        last = self.rows - 1
        if slot != last:
            self._k[slot, :, self.start : self.length] = self._k[last, :, self.start : self.length]
            self._v[slot, :, self.start : self.length] = self._v[last, :, self.start : self.length]
        self.rows = last
        self._refresh()

    def trim(self, start: int) -> None:
        """Show the model columns from `start` on (the caller's attention mask starts there too)."""
        self.start = start
        self._refresh()

    def get_seq_length(self) -> int:
        return self.length - self.start

    def _refresh(self) -> None:
        self.keys = self._k[: self.rows, :, self.start : self.length]
        self.values = self._v[: self.rows, :, self.start : self.length]


def full_cache(model_config) -> DynamicCache:
    """A DynamicCache for this model whose every layer keeps all its columns (see the module docstring)."""
    return compat.cache_with_layers(DynamicCache(config=model_config), compat.dynamic_layer_base())


class SlotCache(DynamicCache):
    """A `DynamicCache` whose layers are `SlotLayer`s: in-place appends, O(one row) removals."""

    def __init__(self, model_config, capacity: int):
        super().__init__(config=model_config)
        compat.cache_with_layers(self, lambda: SlotLayer(capacity))

    def fill(self, parts: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int) -> None:
        """Load every layer from prefilled parts of consecutive rows (each part: (keys, values) per
        layer), right-aligned at column `width` (`SlotLayer.fill`)."""
        for index, layer in enumerate(self.layers):
            layer.fill([part[index] for part in parts], width)

    def remove(self, slot: int) -> None:
        for layer in self.layers:
            layer.remove(slot)

    def trim(self, start: int) -> None:
        """Hide the columns before `start` from the model: no live row uses them (left padding only)."""
        for layer in self.layers:
            layer.trim(start)
