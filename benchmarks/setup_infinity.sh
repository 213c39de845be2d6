#!/usr/bin/env bash
# Create the peer server's venv OUTSIDE the repository: infinity-emb 0.0.78 pins
# transformers 4.47.1, which cannot share a venv with this project (transformers 5).
#
#   bash benchmarks/setup_infinity.sh [VENV_DIR]     # default /work/infinity-venv
#
# Idempotent: an existing venv with infinity-emb 0.0.78 is left as it is.
set -euo pipefail

VENV="${1:-/work/infinity-venv}"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$VENV/bin/infinity_emb" ] && "$VENV/bin/python" -c \
    'import importlib.metadata as m; assert m.version("infinity-emb") == "0.0.78"' 2>/dev/null; then
    echo "infinity-emb 0.0.78 already in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# Same torch as this project, so the model code under comparison runs on the same kernels.
"$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 \
    "infinity-emb[server,vision,torch]==0.0.78" aiohttp
"$VENV/bin/python" -c 'import importlib.metadata as m; print("infinity-emb", m.version("infinity-emb"), "transformers", m.version("transformers"), "torch", m.version("torch"))'
echo "ready: $VENV/bin/infinity_emb"
