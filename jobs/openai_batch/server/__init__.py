"""`runner serve`: OpenAI's Batch API (Files + Batches) in front of this project's jobs on a Ray cluster.

`auth` (keys, owners), `storage` (state on a pyarrow filesystem), `files` and `batches` (the API's
objects), `lifecycle` (statuses from write-once events), `advance` (validate, submit, follow, stop,
finalize), `runs` (the Ray side, as `runner submit`), `app` (the HTTP routes), `serve` (wiring), `cli` (the
command).
"""
