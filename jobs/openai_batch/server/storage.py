"""The server's state on a pyarrow filesystem (a local directory or a URI): files, batches, owners.

Layout under the storage root:

    files/<file_id>/file.json          the file's record (owner, name, purpose, bytes, where its content is)
    files/<file_id>/content.jsonl      an uploaded file's content
    batches/<batch_id>/batch.json      the create request (owner, input file, endpoint, model, times)
    batches/<batch_id>/<event>.json    write-once lifecycle events (`runner...server.lifecycle`)
    batches/<batch_id>/job/            the batch's job output directory (Parquet parts, _job.json)
    batches/<batch_id>/output.jsonl    the OpenAI output file, errors.jsonl the error file

Nothing lives only in the server's memory, so a restarted server or a second replica sees everything.
Every record and event is written once under a temp name and linked into place (`atomic_write` with
replace=False): when two replicas write the same event, the first one wins and both read it back.
A request reaches a path only through an id that matched `ID_RE` (hex from `secrets.token_hex`),
never through text it sent, so nothing outside the root is reachable.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow.fs as pafs

from runner.io.durable import atomic_write, filesystem

ID_RE = {"file": re.compile(r"^file-[0-9a-f]{32}$"), "batch": re.compile(r"^batch_[0-9a-f]{32}$")}
PREFIX = {"file": "file-", "batch": "batch_"}
CHUNK = 1 << 20


class TooLarge(Exception):
    """An upload passed the size limit (nothing of it is kept)."""


def new_id(kind: str) -> str:
    """An unguessable id: 128 random bits."""
    return PREFIX[kind] + secrets.token_hex(16)


def derived_id(kind: str, parent: str, role: str) -> str:
    """The id of an object made from another (a batch's output file): the same on every replica, and
    as unguessable as the parent's id."""
    return PREFIX[kind] + hashlib.sha256(f"{parent}/{role}".encode()).hexdigest()[:32]


def valid_id(kind: str, value: str) -> bool:
    """Whether `value` has the shape of an id of this kind (checked before any path is built)."""
    return bool(ID_RE[kind].match(value))


class Store:
    """Records and contents under one root; paths inside it are relative ('files/<id>/file.json')."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        self.fs, self.root = filesystem(location)
        self.fs.create_dir(self.root, recursive=True)

    def uri(self, rel: str) -> str:
        """What a job on the cluster opens for `rel`: a local path or the storage's URI scheme."""
        if "://" in self.location:
            return f"{self.location}/{rel}"
        return f"{self.root}/{rel}"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    # documents

    def write_once(self, rel_dir: str, name: str, document: dict) -> dict:
        """Write `document` unless `name` exists; return the one on storage (ours or the first writer's)."""
        data = json.dumps(document, sort_keys=True).encode()
        folder = self.path(rel_dir)
        self.fs.create_dir(folder, recursive=True)

        def write(temp: str) -> None:
            with self.fs.open_output_stream(temp) as stream:
                stream.write(data)

        if atomic_write(self.fs, folder, name, write, replace=False):
            return document
        return self.read(f"{rel_dir}/{name}") or document

    def read(self, rel: str) -> dict | None:
        """A JSON document, or None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def children(self, rel_dir: str) -> list[str]:
        """Names of the directories under `rel_dir` (none when it does not exist)."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # contents

    def save(self, rel_dir: str, name: str, source: BinaryIO, max_bytes: int) -> int:
        """Copy a stream into `rel_dir/name`, at most `max_bytes` (else TooLarge, nothing kept)."""
        folder = self.path(rel_dir)
        self.fs.create_dir(folder, recursive=True)
        size = 0

        def write(temp: str) -> None:
            nonlocal size
            with self.fs.open_output_stream(temp) as stream:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        break
                    stream.write(chunk)
            if size > max_bytes:
                self.fs.delete_file(temp)
                raise TooLarge(size)

        atomic_write(self.fs, folder, name, write)
        return size

    def stream(self, rel: str) -> Iterator[bytes]:
        """A file's bytes in chunks (for a streamed download)."""
        with self.fs.open_input_stream(self.path(rel)) as stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    def size(self, rel: str) -> int:
        info = self.fs.get_file_info(self.path(rel))
        return info.size if info.type == pafs.FileType.File else 0

    def delete_dir(self, rel_dir: str) -> None:
        try:
            self.fs.delete_dir(self.path(rel_dir))
        except FileNotFoundError:
            pass

    def delete_file(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass
