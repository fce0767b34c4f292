"""Run the architecture matrix (tests/arch_models.py) and print the README's Architectures table.

    python scripts/architectures.py [--root DIR] [NAME ...]

Every architecture is built as a tiny random model, every strategy runs through the real Engine on CPU
and each row is compared with its unbatched greedy `model.generate`, exactly as
tests/test_architectures.py does. A strategy cell says `exact` (every row equal), `refused` (the
engine refused it at start, with the reason) or `DIFFERS` (rows that differ: a bug). The "auto on one
GPU" column is the engine's decision for a model on one CUDA GPU, from the same model properties; this
script runs on CPU and does not verify it there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import arch_models  # noqa: E402

STRATEGIES = ["padded", "continuous", "generate"]
HEADER = (
    "| architecture | covers | `auto` picks (CPU) | `auto` on one GPU | attention (CPU) | "
    "padded | continuous | generate |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def cell(outcome: arch_models.Outcome) -> str:
    if outcome.refused:
        return "refused: " + outcome.refused.split(": ", 2)[-1].split("; use ")[0]
    return "exact" if not outcome.mismatched else f"DIFFERS (rows {outcome.mismatched})"


def gpu_choice(path: Path) -> str:
    """The strategy auto would pick for this model on one CUDA GPU (a decision, not run here)."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.engine.architecture import Architecture
    from runner.engine.strategy import choose_strategy

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return choose_strategy("auto", {"cuda:0"}, Architecture.of(model))[0]


def row(spec: arch_models.Spec, root: Path) -> str:
    path = arch_models.build(spec, root)
    expected = _reference(path)
    auto = arch_models.run(path, "auto", expected)
    cells = [cell(arch_models.run(path, s, expected)) for s in STRATEGIES]
    picked = f"{auto.strategy} ({cell(auto)})"
    return f"| {spec.name} | {spec.covers} | {picked} | {gpu_choice(path)} | {auto.attention} | {' | '.join(cells)} |"


def _reference(path: Path) -> list[list[int]]:
    from runner.config import ModelConfig
    from runner.engine.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(path=str(path)))
    ids = tokenizer(arch_models.PROMPTS, add_special_tokens=True)["input_ids"]
    return arch_models.reference(path, ids, arch_models.LIMITS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--root", type=Path, help="where to build the models (default: a temp dir)")
    args = parser.parse_args()
    specs = [arch_models.BY_NAME[n] for n in args.names] if args.names else arch_models.SPECS
    root = args.root or Path(tempfile.mkdtemp(prefix="architectures-"))
    print(HEADER)
    bad = False
    for spec in specs:
        line = row(spec, root)
        bad |= "DIFFERS" in line
        print(line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
