"""The `batch` job: an OpenAI batch request file in, OpenAI batch output and error files out.

`runner batch -i requests.jsonl -o results.jsonl --model M` (or `job.run(cfg)`) reads the request file
as a streamed input (`requests`), runs each request through the generate stage with its own body's
options (`stage`, `params`), commits rows into Parquet parts like every job (`runner.orchestration.job.Job`:
resumable, distributed over the replica pool), and at the end assembles the results files from the
committed parts (`results`, `responses`), while the output directory's lease is still held. Its
`_job.json` also holds the batch's `request_counts`.
"""
