#!/usr/bin/env bash
# The issue-5 benchmark suite in one go, for a quiet machine (~30 min on 2 cores).
# Results: benchmarks/results/{serving_throughput,label_tables,interrogation_modes}.md
#
# Setup first, once (not timed here; ~5 min, most of it pip):
#   bash benchmarks/setup_infinity.sh                    # /work/infinity-venv
#   python -m clip_service.testing.full_size_models /work/bench-models
#
#   bash benchmarks/run_all.sh
#
# Environment: MODELS (default /work/bench-models), INFINITY_VENV (default
# /work/infinity-venv), SERVER_ENV (space-separated KEY=VAL server settings passed to
# every script, e.g. SERVER_ENV="TRIM_TEXT_PADDING=true CLIP_PRECISION=bf16"),
# RESULTS (default benchmarks/results), SMOKE=1 (a ~10 min check that every step runs:
# tiny settings, results under /tmp/bench-smoke-results unless RESULTS is set).
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS="${MODELS:-/work/bench-models}"
INFINITY_VENV="${INFINITY_VENV:-/work/infinity-venv}"
PYTHON="${PYTHON:-python}"
if [ "${SMOKE:-0}" = 1 ]; then
    RESULTS="${RESULTS:-/tmp/bench-smoke-results}"
    throughput_args=(--concurrency 8 --duration 3 --warmup 1 --ceiling-seconds 1 --batch-sizes 1,8)
    label_args=(--subset 512 --no-served)
    interrogation_args=(--max-flavors 1)
else
    RESULTS="${RESULTS:-benchmarks/results}"
    throughput_args=()
    label_args=(--subset 4096)
    interrogation_args=(--max-flavors 2)
fi
read -r -a settings <<< "${SERVER_ENV:-}"
server_env=()
for kv in "${settings[@]}"; do server_env+=(--server-env "$kv"); done

for model in open-clip hf-clip blip; do
    if [ ! -f "$MODELS/$model/tiny_model.json" ]; then
        echo "missing $MODELS/$model: run  python -m clip_service.testing.full_size_models $MODELS" >&2
        exit 1
    fi
done
if [ ! -x "$INFINITY_VENV/bin/infinity_emb" ]; then
    echo "missing $INFINITY_VENV: run  bash benchmarks/setup_infinity.sh $INFINITY_VENV" >&2
    exit 1
fi

summary=()
step() {
    local name="$1"
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@"
    summary+=("$name: $((SECONDS - start)) s")
    echo "=== $name done in $((SECONDS - start)) s"
}

total_start=$SECONDS
step serving_throughput "$PYTHON" benchmarks/serving_throughput.py --models "$MODELS" \
    --infinity-venv "$INFINITY_VENV" --out "$RESULTS/serving_throughput.md" \
    "${throughput_args[@]}" "${server_env[@]}"
step serving_core "$PYTHON" benchmarks/serving_core.py --models "$MODELS" --out "$RESULTS/serving_core.md" "${server_env[@]}"
step label_tables "$PYTHON" benchmarks/label_tables.py --models "$MODELS" \
    --out "$RESULTS/label_tables.md" "${label_args[@]}" "${server_env[@]}"
step interrogation_modes "$PYTHON" benchmarks/interrogation_modes.py --models "$MODELS" \
    --label-tables seeded --repeat 1 --out "$RESULTS/interrogation_modes.md" \
    "${interrogation_args[@]}" "${server_env[@]}"

echo
echo "=== step durations"
printf '%s\n' "${summary[@]}"
echo "total: $((SECONDS - total_start)) s"
