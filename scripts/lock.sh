#!/usr/bin/env bash
# Move the lock forward: install the newest releases pyproject.toml allows (less scripts/lock-holds.txt)
# into a fresh venv, write their exact versions to constraints.txt, then run the suite through the lock.
#   bash scripts/lock.sh            # recompile constraints.txt, then run .ci/run with it
#   bash scripts/lock.sh --no-test  # recompile only
# torch is left out of the lock: README's commands install it first (the CPU wheel here, a CUDA build
# on GPU machines) and pip keeps whatever build is there.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
grep -v '^\s*#' scripts/lock-holds.txt | grep -v '^\s*$' > "$work/holds.txt" || true
"$work/venv/bin/pip" install -q torch==2.13.0 -r "$work/holds.txt" -e '.[test]'
{
  echo "# The exact versions the suite last passed with (Python 3.11, Linux x86_64, CPU torch)."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d); install through it: pip install torch==2.13.0 -c constraints.txt -e ."
  echo "# torch is not pinned here: install your build first. Held back: $(tr '\n' ' ' < "$work/holds.txt")"
  "$work/venv/bin/pip" freeze --exclude-editable | grep -viE '^(torch|hf-batch-runner)[=@ ]' | sort -f
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"
if [ "${1:-}" != "--no-test" ]; then
  rm -rf .venv && bash .ci/run
fi
