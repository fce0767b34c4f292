"""Orchestration: running a job on Ray and stopping it cleanly.

`job` drives a run (start checks, the output directory, the stage on Ray, the summary); `cluster`
connects to Ray and runs a stage on a replica pool with Ray Data; `submit` sends a job to a cluster
through Ray Jobs; `progress` is what the operator sees while it runs; `signals` turns Ctrl-C and
SIGTERM into a clean stop; `startup_trace` times a run's fixed start-up; `secret_env` carries
secrets to a submitted job without putting them in its config. The engine (runner.engine), the
output directory (runner.io) and the config (runner.config) know nothing of this package.
"""
