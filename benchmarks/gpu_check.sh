#!/usr/bin/env bash
# The GPU check in one command (~5-8 min on one H200, no network needed): CUDA parity of the
# served model (fp16) against fp32 in process for both CLIP formats, interrogation prompts vs
# clip-interrogator 0.6.0 on CUDA, served vs in-process speed. The steps and figures are
# benchmarks/gpu_check.py's; this script prepares Python and the models, then runs it.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # once, where PyPI is reachable: .whl/
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run        # anywhere: CPU, tiny models, every step
#
# Python: $GPU_CHECK_PYTHON (default: python3 on PATH). Packages it lacks (bentoml, open_clip,
# clip-interrogator, ...) are installed offline from the wheels in $GPU_CHECK_WHEELS (default
# .whl/, git-ignored) into $GPU_CHECK_SITE (default /tmp/gpu-check-site), put first on
# PYTHONPATH: a target folder rather than a venv, since a venv made from the GPU image's
# python3 (itself a venv) would not see that image's CUDA torch. --fetch-wheels downloads
# exactly those (CPython 3.12, manylinux x86-64: the GPU image's), at the versions installed
# where it runs.
# Models: full-size random-weight ViT-B-32 (both formats) and BLIP-base, generated into
# $GPU_CHECK_MODELS (default /tmp/gpu-check-models; tiny ones for --dry-run).
# Results: benchmarks/results/gpu_check.md (a dry run's go to a temporary folder), printed.
# Exit status: 0 every parity check passed; 1 a parity check failed (embeddings or prompts);
# 2 no CUDA device (nothing heavy run); 3 setup failed (packages, models).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
    "") ;;
    --dry-run) mode=dry-run ;;
    --fetch-wheels) mode=fetch ;;
    *)
        echo "usage: bash benchmarks/gpu_check.sh [--dry-run | --fetch-wheels]" >&2
        exit 64
        ;;
esac
PY="${GPU_CHECK_PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"
MODELS="${GPU_CHECK_MODELS:-/tmp/gpu-check-models}"
export PYTHONUNBUFFERED=1

if [ "$mode" = fetch ]; then
    list="$(mktemp)"
    "$PY" benchmarks/gpu_check.py --list-wheels >"$list"
    platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${p}_x86_64")
    done
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$WHEELS" -r "$list"
    echo "$(wc -l <"$list") wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1))"
    exit 0
fi

if [ "$mode" = gpu ]; then
    cuda="$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null || true)"
    if [ "$cuda" != True ]; then
        echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is" \
            "'${cuda:-torch not importable}'): nothing run. On a machine without a GPU," \
            "bash benchmarks/gpu_check.sh --dry-run rehearses every step on the CPU." >&2
        exit 2
    fi
fi

imports='import bentoml, open_clip, clip_interrogator, pydantic_settings, aiohttp, psutil'
if ! "$PY" -c "$imports" 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_check: $PY lacks packages and $WHEELS holds no wheels; run" \
            "bash benchmarks/gpu_check.sh --fetch-wheels where PyPI is reachable" >&2
        exit 3
    fi
    echo "=== installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE (offline)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "$imports" || exit 3
fi

start=$SECONDS
if [ "$mode" = dry-run ]; then
    MODELS="$MODELS-tiny"
    echo "=== tiny models into $MODELS"
    "$PY" -m clip_service.testing.tiny_models "$MODELS" || exit 3
    args=(--dry-run)
else
    echo "=== full-size random-weight models into $MODELS"
    "$PY" -m clip_service.testing.full_size_models "$MODELS" || exit 3
    args=()
fi
echo "=== models ready after $((SECONDS - start)) s"
status=0
"$PY" benchmarks/gpu_check.py --models "$MODELS" "${args[@]}" || status=$?
echo "=== gpu_check: exit $status after $((SECONDS - start)) s"
exit "$status"
