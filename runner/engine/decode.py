"""Our own decode loop for a static batch.

We do not call `model.generate` here because it keeps computing every row until the whole batch is
done: a row that hit EOS or its own `max_new_tokens` still runs through the model at every step (its
output is only masked), so a batch costs rows x its largest limit. This loop removes every row from
the inputs, the attention mask and the KV cache the step it finishes (EOS, own limit, stop string).

How the prompts get into the cache (prefilled by length groups, a shared prefix computed once, read
from one copy or copied per row) is the cache layout's business (runner.engine.layouts): the loop
asks it for a `Batch`, then chooses a token for every live row, drops the finished ones, and steps.
A decode step costs about the same for 8 rows as for 64, a prefill costs what its padded size is.
"""

from __future__ import annotations

import torch

from runner.engine.forward import ModelCall
from runner.engine.sampling import Sampler
from runner.engine.sequence import Sequence, Stopper
from runner.engine.types import stepped


class DecodeLoop:
    """Generates a batch of sequences: the layout's prefill, then one token per step for live rows."""

    def __init__(self, model, sampler: Sampler, stopper: Stopper, layout):
        self.model = model
        self.sampler = sampler
        self.stopper = stopper
        self.layout = layout  # a cache layout (runner.engine.layouts): `start(seqs, forward) -> Batch`
        self._call = ModelCall(model)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> None:
        """Append tokens to every sequence until each is finished (seqs sorted longest prompt first)."""

        def forward(ids, mask, positions, cache) -> torch.Tensor:
            logits = self._call.last(ids, mask, positions, cache)
            stepped(s.request for s in seqs)  # the watchdog's signal: the batch's calls advanced
            return logits

        batch = self.layout.start(seqs, forward)
        while True:
            chosen = self.sampler.choose_rows(batch.logits, batch.seqs).tolist()
            finished = [
                slot
                for slot, (seq, token) in enumerate(zip(batch.seqs, chosen, strict=True))
                if self._append(seq, token)
            ]
            for slot in reversed(finished):
                batch.remove(slot)
            if not batch.seqs:
                return
            batch.step(forward)

    def _append(self, seq: Sequence, token: int) -> bool:
        seq.tokens.append(token)
        return self.stopper.update(seq)
