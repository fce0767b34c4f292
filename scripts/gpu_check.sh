#!/usr/bin/env bash
# The GPU check of issue 18 in one command: every step in order, each under its own `timeout`, every
# result written under $OUT as the step runs (a step that fails or times out loses none before it).
#
#   scripts/gpu_check.sh            run every step (about 8 minutes on an H100/H200; limits sum to 560 s)
#   scripts/gpu_check.sh --dry-run  every step skips and says what it would run; exits 0
#   scripts/gpu_check.sh --fetch-wheels   fill .whl/ here with what the image lacks (below)
#   GPU_CHECK_STEPS="bench quant" scripts/gpu_check.sh   only these steps (a rerun after a timeout;
#       GPU_CHECK_LIMIT_BENCH=400 and the like raise one step's limit)
#
# Steps (limit in seconds):  env 15 (nvidia-smi, versions, pip list)  install 30 (carried wheels, always)
#   model 60 (build demo bench-1b once)  tests 90 (pytest -m gpu: every strategy, 4-bit and 8-bit, cascade
#   attention, a GPU + CPU device map, out-of-memory, the token budget)  exact 90 (scripts/gpu_exact.py:
#   padded and continuous in bf16 against the bf16 and fp32 oracles)  bench 170 (scripts/bench.py --gpu,
#   naive generate and each strategy in one run)  quant 60 (scripts/gpu_quant.py: bitsandbytes 4-bit vs
#   bf16 on the same rows, the planner's predicted memory beside what was used)  prefix 45
#   (scripts/bench.py --workload shared-prefix --parts engine: cascade attention against the copy path)
# Without CUDA every step but env skips, saying why; --dry-run skips env too.
#
# $OUT (default /tmp/gpu_check_out) gets at most 8 files, as the device tool returns at most 8:
#   summary.txt (one line per step: ok / failed / timed out / skipped, seconds), log.txt (every step's
#   output), env.txt, pytest.txt, exact.json, bench.json, quant.json, prefix.json.
#
# What the device image lacks travels in .whl/ (ignored by .gitignore; name it in the tool's `carry`).
# `scripts/gpu_check.sh --fetch-wheels` fills it here (pip download, the versions of constraints.txt,
# x86-64 CPython 3.12 wheels as the image runs): bitsandbytes (not in the image); pydantic, pydantic_core,
# annotated-types, typing-inspection, typing_extensions (runner.config needs pydantic; the image has none);
# transformers at the lock's version (the image had 5.17 on 2026-11, which runner/compat.py was never
# checked on; env.txt records the image's own before the carried one shadows it) and regex (transformers
# refuses to import with a regex older than 2025.10.22, and the image's is not known). By hand, for one:
#   python3 -m pip download bitsandbytes==0.50.2 --no-deps -d .whl --platform manylinux_2_24_x86_64 \
#       --only-binary=:all: --python-version 3.12
# Sizes, 2026-12-02: bitsandbytes 0.50.2 41.1 MiB (its CUDA 11.8-13.2 builds in one wheel; the image's
# torch is cu130), transformers 5.23.0 12.7 MiB, regex and the pydantic five 3.6 MiB: ~58 MiB with the ~1 MiB
# tree, under the tool's 64 MiB limit on what travels (--dry-run prints the sum). The image has torch,
# accelerate, pyarrow, tokenizers, safetensors, huggingface-hub, psutil, pyyaml, jinja2, pytest and
# pytest-timeout, and no Ray: the engine never imports Ray, bench.py skips its ray-job contender.
# FlashAttention-2 is not carried: PyPI has only flash-attn's source, whose CUDA build takes far longer
# than a lease, so attention runs as SDPA (model.attention auto says why in the log).
#
# From the device tool:  run(command="OUT=$OUT bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
PY=${PYTHON:-python3}
STEPS=${GPU_CHECK_STEPS:-env install model tests exact bench quant prefix}
DRY=0
case "${1:-}" in
--dry-run) DRY=1 ;;
--fetch-wheels) FETCH=1 ;;
"") ;;
*)
	echo "usage: scripts/gpu_check.sh [--dry-run | --fetch-wheels]" >&2
	exit 2
	;;
esac
CARRIED="bitsandbytes transformers regex pydantic pydantic_core annotated-types typing-inspection typing_extensions"
if [ "${FETCH:-0}" = 1 ]; then
	mkdir -p .whl
	pins=""
	for name in $CARRIED; do
		pin=$(grep -i "^$name==" constraints.txt) || { echo "constraints.txt pins no $name" >&2; exit 2; }
		pins="$pins $pin"
		rm -f .whl/"$(echo "$name" | tr - _)"-*.whl # one version of each: two stop the whole install
	done
	# shellcheck disable=SC2086
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $pins || exit 1
	ls -la .whl
	echo ".whl: $(du -sm .whl | cut -f1) MiB (what travels must stay under 64 MiB)"
	exit 0
fi
mkdir -p "$OUT"
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RUNNER_CACHE=${RUNNER_CACHE:-/tmp/runner-cache} RAY_DATA_DISABLE_PROGRESS_BARS=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
SITE=/tmp/gpu_check_site
FAILED=0

NO_GPU=""
if [ "$DRY" = 1 ]; then
	NO_GPU="dry run"
elif ! "$PY" -c 'import torch' 2>/dev/null; then
	NO_GPU="$PY cannot import torch"
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
	NO_GPU="no CUDA GPU visible (torch.cuda.is_available() is False)"
fi

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT NEEDS_GPU OUTFILE COMMAND: run COMMAND under `timeout LIMIT`, its output into OUTFILE.
step() {
	local name=$1 limit=$2 gpu=$3 file=$4 cmd=$5
	local override="GPU_CHECK_LIMIT_${name^^}" # e.g. GPU_CHECK_LIMIT_BENCH=400 for a rerun of one step
	limit=${!override:-$limit}
	if [[ " $STEPS " != *" $name "* ]] && [ "$name" != install ]; then # a fresh machine needs install
		note "SKIP $name: not in GPU_CHECK_STEPS"
		return 1
	fi
	if [ "$DRY" = 1 ] || { [ "$gpu" = 1 ] && [ -n "$NO_GPU" ]; }; then
		local first=${cmd%%$'\n'*}
		[ "$first" = "$cmd" ] || first="$first ..."
		note "SKIP $name: ${NO_GPU:-dry run}; would run (limit ${limit}s): $first"
		return 1
	fi
	local header="=== $name $(date -u +%FT%TZ) limit ${limit}s: $cmd"
	echo "$header" >>"$LOG"
	[ "$file" = "$LOG" ] || echo "$header" >>"$file"
	local start=$SECONDS rc=0
	timeout -k 10 "$limit" bash -c "$cmd" >>"$file" 2>&1 || rc=$?
	local took=$((SECONDS - start))
	if [ "$rc" = 0 ]; then
		note "OK   $name: ${took}s"
	elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		note "TIME $name: timed out after ${took}s (limit ${limit}s)"
		FAILED=1
	else
		note "FAIL $name: exit $rc after ${took}s (see $(basename "$file"))"
		FAILED=1
	fi
	[ "$file" = "$LOG" ] || tail -n 25 "$file" >>"$LOG"
	return "$rc"
}

ENV_CMD='nvidia-smi || echo "no nvidia-smi"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
uname -a; nproc; free -g; df -h /tmp
'"$PY"' -c "import sys, torch, transformers, accelerate, importlib.util as u
print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"transformers\", transformers.__version__, \"accelerate\", accelerate.__version__)
print(\"cuda available\", torch.cuda.is_available(), [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())])
print(\"bf16\", torch.cuda.is_available() and torch.cuda.is_bf16_supported(), \"free/total\", torch.cuda.mem_get_info() if torch.cuda.is_available() else None)
print({m: u.find_spec(m) is not None for m in (\"ray\", \"bitsandbytes\", \"pydantic\", \"flash_attn\", \"pytest_timeout\")})"
ls -la .whl 2>/dev/null || echo "no .whl folder carried"
'"$PY"' -m pip list 2>/dev/null'

INSTALL_CMD='ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/ (see this script'"'"'s header)"; exit 3; }
'"$PY"' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target '"$SITE"' .whl/*.whl &&
PYTHONPATH='"$SITE"':$PYTHONPATH '"$PY"' -c "import bitsandbytes, pydantic, transformers, runner.engine, runner.config, sys
print(\"bitsandbytes\", bitsandbytes.__version__, \"pydantic\", pydantic.__version__, \"transformers\", transformers.__version__, \"ray imported:\", \"ray\" in sys.modules)"'

MODEL_CMD="$PY -c \"from runner.engine.demo_model import resolve_demo; print(resolve_demo('demo:bench-1b'))\""

TESTS_CMD="$PY -m pytest \$(grep -l 'pytest.mark.gpu' tests/*.py) -m gpu -rA -p no:cacheprovider --timeout 80"

echo "gpu_check $(date -u +%FT%TZ) on $(hostname): steps [$STEPS], out $OUT${NO_GPU:+, GPU steps skip: $NO_GPU}" | tee -a "$LOG"
if [ "$DRY" = 1 ]; then
	wheels=$(ls .whl/*.whl 2>/dev/null | wc -l)
	echo "carry: .whl holds $wheels wheel(s), $(du -sm .whl 2>/dev/null | cut -f1) MiB; tracked tree $(git ls-files -z | xargs -0 du -cm | tail -1 | cut -f1) MiB (device limit 64 MiB in all)" | tee -a "$LOG"
fi
step env 15 0 "$OUT/env.txt" "$ENV_CMD"
if step install 30 1 "$LOG" "$INSTALL_CMD"; then
	export PYTHONPATH=$SITE:$PYTHONPATH
fi
step model 60 1 "$LOG" "$MODEL_CMD"
step tests 90 1 "$OUT/pytest.txt" "$TESTS_CMD"
step exact 90 1 "$LOG" "$PY scripts/gpu_exact.py --json $OUT/exact.json"
step bench 170 1 "$LOG" "$PY scripts/bench.py --gpu --only baseline padded continuous --json $OUT/bench.json"
step quant 60 1 "$LOG" "$PY scripts/gpu_quant.py --prompts 96 --json $OUT/quant.json"
step prefix 45 1 "$LOG" "$PY scripts/bench.py --workload shared-prefix --parts engine --json $OUT/prefix.json"

echo "--- summary"
cat "$SUMMARY"
for f in "$OUT"/bench.json "$OUT"/exact.json "$OUT"/quant.json "$OUT"/prefix.json; do
	[ -s "$f" ] && echo "--- $(basename "$f")" && head -c 3000 "$f" && echo
done
[ "$DRY" = 1 ] && exit 0
exit "$FAILED"
