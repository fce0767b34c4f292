"""The catalogue of an output directory's part files: which are committed, their ids and counts.

A part counts when the current lease says so. Each lease file (`runner.io.lease`) carries `sealed`,
the part numbers that counted when it was taken, and each part a job writes carries the generation
of the lease it was written under (Parquet metadata `runner.lease_generation`). A part counts iff it
is sealed by the current lease, or was written under the current generation, or carries no
generation at all (written by an earlier version, or outside a job). So a part that a frozen old
holder links after a takeover (it passed its lease check, then froze before the link) never counts:
its generation is an old one and the new lease's seal, written before the new holder read anything,
does not list it. The holder removes such parts (`sweep`) when it takes the lease and before it ends.
A directory without lease files counts every part, as earlier versions did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runner.errors import OutputError
from runner.io.durable import atomic_write
from runner.io.holder import Holder
from runner.io.lease import Lease

PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
GENERATION_KEY = b"runner.lease_generation"
# Columns a duplicate-id row loses: what was generated for it (the first row with the id keeps its own).
_GENERATED = ("generation", "samples", "token_ids", "logprobs", "prompt_logprobs", "parsed")


def part_name(number: int) -> str:
    """``part-00042.parquet``."""
    return f"part-{number:05d}.parquet"


def duplicate_id_error(row_id: str) -> str:
    """The error of every row after the first with one id (`error_kind` row)."""
    return f"duplicate id {row_id!r}: an earlier input row has this id (ids must be unique)"


def compress(numbers: list[int]) -> list[list[int]]:
    """Sorted part numbers as [first, last] ranges: a lease's seal stays small."""
    ranges: list[list[int]] = []
    for n in sorted(numbers):
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ranges


def expand(ranges: list) -> set[int]:
    return {n for first, last in ranges for n in range(first, last + 1)}


class Catalogue:
    """The part files of one directory (a pyarrow filesystem and a root path in it)."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root

    def numbers(self) -> list[int]:
        """Numbers of every part file present, committed or not, ascending."""
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(int(m.group(1)) for info in infos if (m := PART_RE.match(info.base_name)))

    def committed(
        self, lease: Holder | None = None, current: bool = True, present: list | None = None
    ) -> list[int]:
        """Numbers of the parts that count under `lease` (by default the directory's current lease)."""
        if current and lease is None:
            lease = Lease(self.fs, self.root).current()
        present = self.numbers() if present is None else present
        if lease is None or lease.generation == 0:
            return present
        sealed = expand(lease.sealed)
        return [n for n in present if n in sealed or self.generation(n) in (None, lease.generation)]

    def seal(self, previous: Holder | None) -> tuple[list[list[int]], int]:
        """What a new lease records (`Lease.acquire`): the parts that count under the previous one, and
        the number its writer starts at, above every part number present or recorded before.

        A number present when a lease is taken is never used by that holder's writer or a later one:
        so a holder that froze between its lease check and deleting a part that does not count
        (`sweep`) and resumes after a takeover deletes that part or nothing, never a newer holder's
        part that took its name (the takeover saw the part, so the new writer numbers above it)."""
        present = self.numbers()
        first = max([previous.next_part if previous is not None else 0] + [n + 1 for n in present])
        return compress(self.committed(previous, current=False, present=present)), first

    def zombies(self) -> list[int]:
        """Parts present that do not count: linked by a holder after its lease was taken over."""
        committed = set(self.committed())
        return [n for n in self.numbers() if n not in committed]

    def sweep(self, fence: Callable | None = None) -> list[str]:
        """Delete the parts that do not count (the lease holder does, under `fence`); return them."""
        gone = []
        for number in self.zombies():
            if fence is not None:
                fence()
            try:
                self.fs.delete_file(self._file(number))
            except FileNotFoundError:  # a holder after us swept it first
                continue
            gone.append(part_name(number))
        return gone

    def remove(self, numbers: list[int]) -> list[str]:
        """Delete these parts (those already gone are skipped); return the names deleted."""
        gone = []
        for number in numbers:
            try:
                self.fs.delete_file(self._file(number))
            except FileNotFoundError:
                continue
            gone.append(part_name(number))
        return gone

    def generation(self, number: int) -> int | None:
        """The lease generation a part was written under; None for a part written without one."""
        try:
            meta = pq.read_metadata(self._file(number), filesystem=self.fs).metadata or {}
        except (pa.ArrowException, OSError) as err:
            raise OutputError(f"output.path: cannot read {self._file(number)}: {err}") from None
        value = meta.get(GENERATION_KEY)
        return int(value) if value is not None else None

    # -- what the committed parts hold ------------------------------------------------------------
    def columns(self, name: str) -> Iterator[pa.ChunkedArray]:
        """One column of each committed part, in part order."""
        for number in self.committed():
            file = self._file(number)
            try:
                yield pq.read_table(file, columns=[name], filesystem=self.fs).column(name)
            except (pa.ArrowException, OSError, KeyError) as err:
                raise OutputError(f"output.path: cannot read column '{name}' of {file}: {err}") from None

    def tables(self, names: list[str]) -> Iterator[tuple[pa.Table, float]]:
        """The named columns (those a part has) of each committed part, in part order, with the time
        the part was written (Unix seconds)."""
        for number in self.committed():
            file = self._file(number)
            try:
                present = set(pq.read_schema(file, filesystem=self.fs).names)
                table = pq.read_table(file, columns=[n for n in names if n in present], filesystem=self.fs)
                mtime = self.fs.get_file_info(file).mtime
            except (pa.ArrowException, OSError) as err:
                raise OutputError(f"output.path: cannot read {file}: {err}") from None
            yield table, mtime.timestamp() if mtime is not None else 0.0

    def ids(self) -> pa.Array:
        """Ids of every committed part as one Arrow string array: resume's lookup, in Arrow memory."""
        chunks = [chunk for column in self.columns("id") for chunk in column.cast(pa.string()).chunks]
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())

    def distinct_ids(self) -> int:
        """Distinct ids over every committed part (Arrow's hash count, no Python set)."""
        ids = self.ids()
        return int(pc.count_distinct(ids).as_py()) if len(ids) else 0

    def counts(self) -> tuple[int, int]:
        """(rows, rows with an error) over every committed part: the whole job, all runs together."""
        rows = errors = 0
        for column in self.columns("error"):
            rows, errors = rows + len(column), errors + len(column) - column.null_count
        return rows, errors

    def retryable_ids(self) -> pa.Array:
        """Ids of committed error rows the infrastructure caused (`error_kind` engine, or no kind: parts
        written before the column existed); a row's own errors would fail the same way again."""
        chunks = []
        for number in self.committed():
            file = self._file(number)
            names = pq.read_schema(file, filesystem=self.fs).names
            if "error" not in names:  # a job kind whose rows cannot fail
                continue
            wanted = [c for c in ("id", "error", "error_kind") if c in names]
            table = pq.read_table(file, columns=wanted, filesystem=self.fs)
            mask = pc.is_valid(table.column("error"))
            if "error_kind" in names:
                row_fault = pc.fill_null(pc.equal(table.column("error_kind"), "row"), False)
                mask = pc.and_(mask, pc.invert(row_fault))
            chunks += table.filter(mask).column("id").cast(pa.string()).chunks
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())

    # -- rewriting committed parts ----------------------------------------------------------------
    def drop_rows(self, ids: pa.Array, fence: Callable | None = None) -> int:
        """Remove the rows with these ids from the committed parts; return how many went.

        Each affected part is rewritten atomically (temp file, fsync, rename over it; with no rows
        when none is left), one part at a time: a crash half way leaves every row either committed once or
        not committed (so pending, and generated by the next run), never twice."""
        if not len(ids):
            return 0
        dropped = 0
        for number in self.committed():
            table = pq.read_table(self._file(number), filesystem=self.fs)
            kept = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=ids)))
            if kept.num_rows < table.num_rows:
                dropped += table.num_rows - kept.num_rows
                self._rewrite(number, kept, fence)
        return dropped

    def mark_duplicates(self, fence: Callable | None = None) -> int:
        """Every committed row after the first (in part order) with an id another row has becomes an
        error row naming the id (`error_kind` row, its generation dropped); return how many changed.
        Idempotent: rows already marked stay as they are."""
        ids = self.ids()
        if not len(ids) or pc.count_distinct(ids).as_py() == len(ids):
            return 0
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        seen: set[str] = set()
        marked = 0
        for number in self.committed():
            table = pq.read_table(self._file(number), filesystem=self.fs)
            rows = table.to_pylist()
            changed = 0
            for i in pc.indices_nonzero(pc.is_in(table.column("id"), value_set=repeated)).to_pylist():
                row = rows[i]
                if row["id"] not in seen:
                    seen.add(row["id"])
                elif row.get("error") != duplicate_id_error(row["id"]):
                    _mark_duplicate(row)
                    changed += 1
            if changed:
                self._rewrite(number, pa.Table.from_pylist(rows, schema=table.schema), fence)
                marked += changed
        return marked

    def _rewrite(self, number: int, table: pa.Table, fence: Callable | None) -> None:
        # A part left with no rows is rewritten empty, not deleted: a delete by name cannot be fenced
        # (a writer frozen after its check would delete whatever the part holds by then, counted by a
        # newer holder), while a rewrite goes through a temp file the next holder removes.
        write = lambda temp: pq.write_table(table, temp, filesystem=self.fs)  # noqa: E731
        atomic_write(self.fs, self.root, part_name(number), write, replace=True, fence=fence)

    def _file(self, number: int) -> str:
        return f"{self.root}/{part_name(number)}"


def _mark_duplicate(row: dict) -> None:
    row["error"], row["error_kind"] = duplicate_id_error(row["id"]), "row"
    for name in _GENERATED:
        if name in row:
            row[name] = None
    if isinstance(row.get("finish_reason"), list):  # written before output schema 2
        row["finish_reason"] = ["error"] * len(row["finish_reason"])
    elif "finish_reason" in row:
        row["finish_reason"] = "error"
    for name in ("generated_tokens", "completion_tokens"):
        if name in row:
            row[name] = 0
