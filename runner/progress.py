"""A progress bar over output rows, showing rows/s and generated tokens/s."""

from __future__ import annotations

from tqdm import tqdm

from runner import logs


class Progress:
    """tqdm over rows; the postfix carries token throughput and error count."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, unit="row", desc="generate", file=logs.terminal(), dynamic_ncols=True)

    def update(self, rows: int, stats) -> None:
        self.bar.update(rows)
        self.bar.set_postfix(tok_s=f"{stats.tokens_per_s():.1f}", errors=stats.rows_error, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
