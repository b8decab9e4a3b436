#!/usr/bin/env bash
# A real ComfyUI server for the integration tests and the bench, built once into .comfyui/ and reused:
#   .comfyui/ComfyUI/          the unpacked source (v0.3.64 from ../shared/comfyui, or DIFFUSION_DESK_COMFYUI_SOURCE:
#                              a .tar.gz or an unpacked folder)
#   .comfyui/venv/             its own virtual environment (torch 2.13.0 CPU, its requirements but torchvision/torchaudio)
#   .comfyui/standin/          a stand-in `torchvision` (no build of it matches torch 2.13.0+cpu; SD 1.x never calls it)
#   .comfyui/models/           the smallest SD 1.x checkpoint ComfyUI accepts (random weights, ~465 MB)
# Each step is skipped when its result is there, so a second run takes a second. Exits 0 with a message and builds
# nothing when no ComfyUI source is found (the tests then skip, saying why).
#   bash tools/setup_comfyui.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HOME_DIR=${DIFFUSION_DESK_COMFYUI_HOME:-$ROOT/.comfyui}
SOURCE=${DIFFUSION_DESK_COMFYUI_SOURCE:-$ROOT/../shared/comfyui/ComfyUI-0.3.64.tar.gz}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
MAIN_PYTHON=${MAIN_PYTHON:-$ROOT/.venv/bin/python}

if [[ ! -e "$SOURCE" ]]; then
    echo "setup_comfyui: no ComfyUI source at $SOURCE (set DIFFUSION_DESK_COMFYUI_SOURCE); the ComfyUI tests will skip"
    exit 0
fi
mkdir -p "$HOME_DIR"

# 1. the source
if [[ ! -f "$HOME_DIR/ComfyUI/main.py" ]]; then
    rm -rf "$HOME_DIR/ComfyUI" "$HOME_DIR/ComfyUI.partial"
    mkdir -p "$HOME_DIR/ComfyUI.partial"
    if [[ -d "$SOURCE" ]]; then
        cp -a "$SOURCE/." "$HOME_DIR/ComfyUI.partial/"
    else
        tar xzf "$SOURCE" -C "$HOME_DIR/ComfyUI.partial" --strip-components=1
    fi
    mv "$HOME_DIR/ComfyUI.partial" "$HOME_DIR/ComfyUI"
    echo "setup_comfyui: source unpacked"
fi

# 2. its virtual environment (the stamp is written last: a half-done install is redone)
VENV="$HOME_DIR/venv"
REQS_HASH=$(sha256sum "$HOME_DIR/ComfyUI/requirements.txt" | cut -c1-16)
if [[ "$(cat "$VENV/.ready" 2>/dev/null)" != "$TORCH_VERSION $REQS_HASH" ]]; then
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)}
        if [[ -n "$WHEEL" ]]; then
            "${PIP[@]}" install "$WHEEL"
        else
            "${PIP[@]}" install "torch==$TORCH_VERSION"  # as tools/setup.sh: the CPU build on this disk
        fi
    fi
    # torch is there; torchvision and torchaudio have no build for it (see the stand-in); requests is imported but
    # not listed
    grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$HOME_DIR/ComfyUI/requirements.txt" >"$HOME_DIR/requirements.txt"
    "${PIP[@]}" install -r "$HOME_DIR/requirements.txt" requests
    echo "$TORCH_VERSION $REQS_HASH" >"$VENV/.ready"
    echo "setup_comfyui: environment ready"
fi

# 3. the stand-in torchvision: importable, every attribute missing
STANDIN="$HOME_DIR/standin/torchvision"
if [[ ! -f "$STANDIN/transforms/__init__.py" ]]; then
    mkdir -p "$STANDIN/transforms"
    for f in "$STANDIN/__init__.py" "$STANDIN/transforms/__init__.py"; do
        cat >"$f" <<'PY'
"""Stand-in torchvision for Diffusion Desk's ComfyUI tests: importable, but every name is missing."""


def __getattr__(name):
    raise AttributeError(f"torchvision stand-in: {name} is not available")
PY
    done
fi

# 4. the test checkpoint, built with the app's own exporter (main venv)
CKPT="$HOME_DIR/models/dd-tiny-sd1.safetensors"
if [[ ! -f "$CKPT" ]]; then
    "$MAIN_PYTHON" -m tools.comfyui_checkpoint "$CKPT"
    echo "setup_comfyui: checkpoint built"
fi
echo "setup_comfyui: ready in $HOME_DIR"
