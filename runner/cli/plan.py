"""`runner plan`: will the job's model fit, and how should it be placed (no weights are loaded)."""

from __future__ import annotations

import argparse
import json

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="plan memory and placement for a job config, without loading weights")
    p.add_argument("config", help="job config (YAML)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", type=int, metavar="N", help="GPUs per node (default: this machine's)")
    where.add_argument(
        "--cluster", action="store_true", help="plan for the Ray cluster of the config's ray section"
    )
    p.add_argument(
        "--gpu-memory", metavar="SIZE", help="memory of each GPU, e.g. 80GiB (with --gpus or --cluster)"
    )
    p.add_argument(
        "--nodes", type=int, default=1, metavar="N", help="identical nodes (with --gpus; default 1)"
    )
    p.add_argument("--cpu-memory", metavar="SIZE", help="CPU memory per node (default: this machine's)")
    p.add_argument(
        "--prompt-tokens",
        type=int,
        default=1024,
        metavar="N",
        help="prompt length to plan rows for (default 1024)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    options.add_set(p, help="override a config value, e.g. --set model.quantization.mode=4bit")
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    """Print the table (or JSON); exit 0 when it fits (with offload too), 2 when it does not."""
    from runner.config import load_config
    from runner.planning import plan
    from runner.planning.report import as_json, table

    cfg = load_config(args.config, args.overrides)
    result = plan(cfg, hardware(args, cfg), args.prompt_tokens)
    print(json.dumps(as_json(result), indent=2) if args.json else table(result))
    return 2 if result.verdict == "no" else 0


def hardware(args: argparse.Namespace, cfg):
    """The hardware the flags describe: --gpus, --cluster, or this machine."""
    from runner.config import parse_size
    from runner.errors import ConfigError
    from runner.planning import Hardware

    def size(flag: str, text: str | None) -> int | None:
        try:
            return parse_size(text) if text else None
        except ValueError as err:
            raise ConfigError(f"{flag}: {err}") from None

    gpu_memory, cpu_memory = size("--gpu-memory", args.gpu_memory), size("--cpu-memory", args.cpu_memory)
    if args.cluster:
        from runner.orchestration import cluster

        cluster.connect(cfg.ray)
        return cluster.hardware(gpu_memory)
    if args.gpus is not None:
        if args.gpus > 0 and gpu_memory is None:
            raise ConfigError("--gpus needs --gpu-memory (e.g. --gpus 8 --gpu-memory 80GiB)")
        return Hardware.uniform(args.nodes, args.gpus, gpu_memory, cpu_memory)
    if gpu_memory is not None or cpu_memory is not None:
        flag = "--gpu-memory" if gpu_memory is not None else "--cpu-memory"
        raise ConfigError(f"{flag} needs --gpus N" + (" or --cluster" if gpu_memory is not None else ""))
    return Hardware.this_machine()
