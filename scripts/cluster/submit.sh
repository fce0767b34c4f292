#!/usr/bin/env bash
# Submit a runner job to a Ray cluster: scripts/cluster/submit.sh CONFIG [runner run args...]
# Needs RAY_ADDRESS=http://HEAD:8265 (the Ray dashboard / job server address).
set -euo pipefail
config=${1:?usage: submit.sh CONFIG [runner run args...]}
shift
: "${RAY_ADDRESS:?set RAY_ADDRESS=http://HEAD:8265}"
exec ray job submit --working-dir . -- python -m runner run "$config" --set ray.address=auto "$@"
