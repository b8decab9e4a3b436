#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with the right PyTorch build, then Diffusion Desk and its test tools.
#   bash tools/setup.sh            # CPU build of torch unless an NVIDIA GPU is present
#   TORCH_CUDA=cu128 bash tools/setup.sh   # force a CUDA build (cu126, cu128, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${VENV:-.venv}

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif [[ -n "${TORCH_CUDA:-}" ]] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
    # NVIDIA GPU: PyTorch's CUDA wheels (several GB)
    "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA:-cu128}" \
        || "${PIP[@]}" install "torch==$TORCH_VERSION"
else
    # No NVIDIA GPU: the CPU build (about 200 MB instead of several GB of CUDA libraries)
    "${PIP[@]}" install --no-deps "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi

# The app, its dependencies (torch's own come along here) and the test tools, editable so tests run on this checkout.
"${PIP[@]}" install -e ".[test]"
"$VENV/bin/python" -c "import torch, diffusers, PySide6; print('ready: torch', torch.__version__, '| diffusers', diffusers.__version__, '| PySide6', PySide6.__version__)"
