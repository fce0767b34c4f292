"""A job's output directory: the one home of what its files mean to a job.

The directory is the job's state. `JobDir` owns its filesystem handle, its lease
(`runner.io.lease`) and its catalogue of committed parts (`runner.io.catalogue`); `runner.io.outputs`
knows how files are written (atomic Parquet parts, the summary document). This class knows what they
mean for a job of any kind (generate, eval): whether the directory may be used, whether an earlier
run in it had the same settings, which input rows are already done, how many rows and error rows it
holds, and what `--overwrite` may remove. Job kinds talk to their output only through it.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from runner.config import JobConfig
from runner.errors import OutputError
from runner.io import outputs
from runner.io.catalogue import Catalogue
from runner.io.durable import filesystem
from runner.io.lease import Lease
from runner.io.output_schema import OUTPUT_SCHEMA_VERSION

log = logging.getLogger(__name__)


class Pending:
    """A streamed input's rows still to do (`num_rows`: the planned count, named as a table's, so a
    job treats both alike); `dataset()` reads them."""

    def __init__(self, source, done: pa.Array, rows: int):
        self.source, self._done, self.num_rows = source, done, rows

    def dataset(self, block_rows: int):
        """The lazy Ray Dataset of the rows not done, in blocks of `block_rows` (one Ray Data batch
        each, so the replicas share the work from the first batch on). The done ids go to the
        object store here and the driver lets go of its copy."""
        done, self._done = self._done, None
        return self.source.dataset(done, block_rows)


def not_done(batch: pa.Table, done: pa.Array) -> pa.Array:
    """Mask of the batch's rows whose id is not in `done` (an Arrow hash lookup, no Python set)."""
    return pc.invert(pc.is_in(batch.column("id"), value_set=done))


class JobDir:
    """The output directory of one job (local path or pyarrow filesystem URI): its filesystem, its
    lease and its catalogue of committed parts, in one object.

    While the lease is held (`acquire`), every write this object makes (parts, rewrites, the summary)
    is fenced by it: the lease is read back right before the file is moved into place, and a part a
    superseded holder links anyway never counts (`runner.io.catalogue`)."""

    def __init__(self, path: str):
        self.path = path
        self.fs, self.root = filesystem(path)
        self.catalogue = Catalogue(self.fs, self.root)
        self._lease: Lease | None = None

    def lease(self, timeout_s: float = 120.0, heartbeat_s: float = 10.0) -> JobDir:
        """Configure this directory's lease (one writer at a time); use as `with dir.lease(...):`.

        A second driver gets an `OutputError` naming the holder; a stale lease is taken over."""
        self._lease = Lease(self.fs, self.root, timeout_s=timeout_s, heartbeat_s=heartbeat_s)
        return self

    def acquire(self) -> JobDir:
        """Take the lease (sealing the parts that count now into it), then remove every temp file
        (a superseded writer frozen before its link then has nothing to link) and the parts that a
        superseded holder linked after it lost the lease."""
        if self._lease is None:
            self.lease()
        self._lease.acquire(seal=self.catalogue.seal)
        try:
            self.fence()  # a driver that froze while taking the lease must not clear its successor's
            outputs.remove_temp_files(self.fs, self.root)
            swept = self.catalogue.sweep(self.fence)
        except BaseException:
            self._lease.release()
            raise
        if swept:
            log.warning("output.path: removed %d part(s) written after their run lost its lease", len(swept))
        return self

    def release(self) -> None:
        if self._lease is not None and self._lease.generation is not None:
            self._lease.release()

    def __enter__(self) -> JobDir:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def fence(self) -> None:
        """Raise `LeaseLost` unless this run still holds the lease (a no-op when none is taken)."""
        if self._lease is not None and self._lease.generation is not None:
            self._lease.check()

    @property
    def generation(self) -> int | None:
        return self._lease.generation if self._lease is not None else None

    def prepare(self) -> None:
        """Create it and check it is writable; while the lease is held, also remove temp files a
        crash left (ours only; never without the lease: a running holder's commit is one of them)."""
        outputs.prepare_output_dir(self.fs, self.root, self.path, remove_temps=self.generation is not None)

    def check_previous(self, cfg: JobConfig, overwrite: bool) -> None:
        """Refuse to mix outputs of different settings in one directory, or to touch parts not ours.

        Settings are compared by `cfg.result_hash()`; a refusal names the differing settings of the
        config's `result_sections` (a job kind's config adds its own, e.g. eval's scoring)."""
        previous = self.summary()
        if previous is None:
            if self.catalogue.numbers():
                # Every run writes its summary before its first part: these parts are someone else's.
                raise OutputError(
                    f"output.path: {self.path} holds part files but no {outputs.SUMMARY_NAME}, so not a "
                    "job of this runner; choose another output directory"
                )
            return
        if overwrite:
            return
        check_schema_version(previous, self.path, bool(self.catalogue.numbers()))
        if previous.get("config_hash") == cfg.result_hash():
            return
        new = cfg.model_dump(mode="json")
        differ = differing_settings(previous.get("config", {}), new, cfg.result_sections)
        raise OutputError(
            f"output.path: {self.path} holds a job with different settings "
            f"({', '.join(differ) or 'unknown'}); pass --overwrite or choose another output directory"
        )

    def clear(self) -> list[str]:
        """`--overwrite`: delete the previous job's parts; return their names.

        The lease first moves to a new generation that seals nothing, so no part present counts for
        this run or any later one; then the parts numbered below this run's first number go, and only
        they (a delete by name cannot be fenced: this run, frozen here and resumed after a takeover,
        deletes parts that count for no one, never the new holder's). Temp files went when the lease
        was taken; the summary is replaced by this run's own."""
        if self._lease is None or self._lease.generation is None:
            return outputs.PartWriter.remove_parts(self.fs, self.root)
        present = self.catalogue.numbers()
        self._lease.renew([], max([self._lease.next_part] + [n + 1 for n in present]))
        self.fence()
        return self.catalogue.remove([n for n in present if n < self._lease.next_part])

    def pending(self, table):
        """Input rows whose ids are not yet committed here; and how many were.

        A table gives a table. A streamed input (`runner.io.stream.StreamedInput`) gives a `Pending`:
        its lazy Ray Dataset drops committed ids inside the read tasks (the done ids go to the
        object store once), its `rows` is the planned count; "how many were" is then the number of
        committed rows (all of this input's: the settings hash, `data` included, matched)."""
        if not isinstance(table, pa.Table):
            return self._pending_stream(table)
        done = self.done_ids()
        if not len(done):
            return table, 0
        todo = table.filter(not_done(table, done))
        return todo, table.num_rows - todo.num_rows

    def _pending_stream(self, source):
        done = self.done_ids()
        skipped = min(len(done), source.total_rows)
        return Pending(source, done, source.total_rows - skipped), skipped

    def done_ids(self) -> pa.Array:
        """Ids committed here, as one Arrow string array (no Python objects: 10 M ids fit in ~200 MB)."""
        return self.catalogue.ids()

    def writer(self, rows_per_file: int, flush_seconds: float | None = None) -> outputs.PartWriter:
        """The part writer that appends this run's rows after the committed parts, each part tagged
        with the lease's generation and fenced by it."""
        return outputs.PartWriter(
            self.fs,
            self.root,
            rows_per_file,
            flush_seconds=flush_seconds,
            fence=self.fence,
            generation=self.generation,
            first_number=self._lease.next_part if self._lease is not None else 0,
        )

    def drop_retryable_errors(self) -> int:
        """`--retry-errors`: remove committed error rows the infrastructure caused (error_kind engine),
        so they are pending again and this run generates them; return how many. Rows are dropped
        before they are generated again, each part rewritten atomically, so an id is never in two
        committed rows, whenever the run stops."""
        return self.catalogue.drop_rows(self.catalogue.retryable_ids(), self.fence)

    def mark_duplicate_ids(self) -> int:
        """Every committed row after the first with an id another row has becomes an error row naming
        the id (`error_kind` row); return how many changed. A streamed input is not checked for
        repeated ids before the run: its rows meet here, once they are committed."""
        return self.catalogue.mark_duplicates(self.fence)

    def sweep(self) -> list[str]:
        """Remove parts a superseded holder linked after losing the lease (they never count)."""
        return self.catalogue.sweep(self.fence)

    def summary(self) -> dict | None:
        """The summary document of the last run here, or None."""
        return outputs.read_summary(self.fs, self.root)

    def write_summary(self, summary: dict) -> None:
        """Write `_job.json`, fenced: a run that lost the lease writes no summary."""
        outputs.write_summary(self.fs, self.root, summary, self.fence)

    def read_document(self, name: str) -> dict | None:
        """A job kind's own JSON document in the directory (eval's `_metrics.json`), or None."""
        return outputs.read_json(self.fs, self.root, name)

    def write_document(self, name: str, document: dict) -> None:
        """Write a job kind's own JSON document atomically, fenced like the summary."""
        outputs.write_json(self.fs, self.root, name, document, self.fence)


def check_schema_version(previous: dict, path: str, has_parts: bool) -> None:
    """Parts written under another output schema (docs/outputs.md) cannot share a directory with new ones."""
    version = previous.get("output_schema", 1)
    if has_parts and version != OUTPUT_SCHEMA_VERSION:
        raise OutputError(
            f"output.path: {path} was written with output schema {version}, this runner writes "
            f"{OUTPUT_SCHEMA_VERSION} (docs/outputs.md); pass --overwrite or choose another output directory"
        )


def differing_settings(old: dict, new: dict, sections: tuple[str, ...], prefix: str = "") -> list[str]:
    """Dotted names of the settings under `sections` that differ between two config dumps."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_settings(a, b, sections, name + ".")
        elif a != b and name.split(".")[0] in sections:
            out.append(name)
    return out
