"""Job kinds, each built on the `runner` library: one package per kind.

- `jobs.generate`: every row of a dataset -> its generation(s) (`runner run`).
- `jobs.eval`: tasks' rows -> generations or choice log-likelihoods -> scores and metrics, suites of
  runs, comparisons with regression gates, HTML reports (`runner eval | compare | report`).
- `jobs.openai_batch`: an OpenAI batch request file -> OpenAI batch output and error files
  (`runner batch`).

A kind owns its stage (the Ray Data UDF its replicas run), its config model when it adds sections, its
own output files and its CLI commands; the lifecycle, engine, I/O and cluster are `runner`'s. `runner`
finds a kind's commands through its registry (`runner.cli.COMMANDS`), never by importing it.
"""
