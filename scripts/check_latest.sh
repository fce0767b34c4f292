#!/usr/bin/env bash
# Drift check: does the project still work on the newest releases of what it depends on?
# Installs every dependency at its newest release, without the lock and past pyproject's upper bounds,
# into a fresh venv; prints which packages moved past constraints.txt; then runs the fast compatibility
# subset: the private-API tests (tests/test_compat.py), the fail-fast engine tests, one architecture per
# strategy, a 20-row demo job and the eval demo. `--full` runs the whole suite instead of the subset.
#   bash scripts/check_latest.sh [--full]
# Exit status: 0 when everything passed on the newest releases, 1 otherwise (CI may run it soft-failing,
# as vLLM's "transformers nightly" step does; nothing in it changes the lock).
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv="$work/venv"
python3 -m venv "$venv"
pip() { "$venv/bin/pip" "$@"; }
pip install -q torch==2.13.0 -e '.[test]' || exit 1
# The newest release of every direct dependency, even past our upper bounds (pip warns about them).
direct=$("$venv/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
names = project["dependencies"] + project["optional-dependencies"]["test"]
print(" ".join(re.split(r"[<>=!~ ;]", n, maxsplit=1)[0] for n in names if not n.startswith("torch")))
PY
)
pip install -q --upgrade $direct 2>&1 | grep -v "^WARNING: Location" || true
echo "== packages newer than constraints.txt"
pip freeze --exclude-editable | "$venv/bin/python" -c '
import sys
lock = dict(l.strip().split("==", 1) for l in open("constraints.txt") if "==" in l and not l.startswith("#"))
for line in sys.stdin:
    if "==" in line:
        name, new = line.strip().split("==", 1)
        old = lock.get(name)
        if old is not None and old != new:
            print(f"  {name}: {old} -> {new}")
'
export PATH="$venv/bin:$PATH"
status=0
run() { echo "== $*"; "$@" || status=1; }
if [ "${1:-}" = "--full" ]; then
  run python -m pytest -q
else
  run python -m pytest -q tests/test_compat.py tests/test_private_api.py tests/test_engine_failures.py \
    "tests/test_architectures.py::test_every_row_equals_the_unbatched_reference_or_is_refused_at_start" -k "compat or failures or llama or mamba"
  run runner run configs/demo.yaml --output "$work/demo" --set data.limit=20
  run runner eval configs/eval-demo.yaml --output "$work/eval"
fi
echo "== drift check: $([ $status = 0 ] && echo passed || echo FAILED) on the newest releases"
exit $status
