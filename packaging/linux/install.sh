#!/usr/bin/env bash
# Install Diffusion Desk for the current user, with a launcher in the application menu. No root needed.
#
#   bash packaging/linux/install.sh               # install (or update) from this checkout
#   bash packaging/linux/install.sh --uninstall   # remove the app, the launcher and the icons (your images and history stay)
#
# What it does:
#   1. a virtual environment in ~/.local/share/diffusion-desk/venv with PyTorch (the CPU build, or a CUDA build when
#      an NVIDIA GPU is present, as tools/setup.sh does) and Diffusion Desk;
#   2. `diffusion-desk` and `diffusion-desk-cli` links in ~/.local/bin;
#   3. the launcher entry, the icons and the AppStream metadata in ~/.local/share/{applications,icons,metainfo},
#      then refreshes the desktop's caches. Running it again updates in place.
#
# Options:
#   --uninstall        remove what an install put there
#   --venv DIR         the virtual environment to use (default: $XDG_DATA_HOME/diffusion-desk/venv)
#   --wheel FILE       install this wheel instead of this checkout
#   --no-pip           do not create or change the environment: only register the launcher for the
#                      `diffusion-desk` already in --venv (e.g. a developer's .venv)
#   --bundle DIR       register the PyInstaller bundle in DIR (DIR/diffusion-desk) instead of a Python install;
#                      the default when this script runs from a bundle's linux/ folder
# Environment: PYTHON (default python3), TORCH_VERSION, TORCH_CUDA (cu126, cu128, ...; forces a CUDA build),
#   PIP_ARGS (extra arguments for installing the app, e.g. --no-deps), XDG_DATA_HOME, XDG_BIN_HOME.
set -euo pipefail

APP_ID=io.github.diffusiondesk.DiffusionDesk
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
BIN_HOME="${XDG_BIN_HOME:-$HOME/.local/bin}"
APP_HOME="$DATA_HOME/diffusion-desk"
VENV="$APP_HOME/venv"
MANIFEST="$APP_HOME/install-manifest.txt"
MARKER=".created-by-diffusion-desk-install"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
ACTION=install
WHEEL=""
NO_PIP=0
BUNDLE=""
if [[ -x "$HERE/../diffusion-desk" && -d "$HERE/../_internal" ]]; then  # shipped inside a bundle (build_bundle.sh)
    BUNDLE="$(cd "$HERE/.." && pwd)"
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --uninstall) ACTION=uninstall ;;
        --venv) VENV="$2"; shift ;;
        --venv=*) VENV="${1#*=}" ;;
        --wheel) WHEEL="$2"; shift ;;
        --wheel=*) WHEEL="${1#*=}" ;;
        --no-pip) NO_PIP=1 ;;
        --bundle) BUNDLE="$2"; shift ;;
        --bundle=*) BUNDLE="${1#*=}" ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '%s\n' "$*"; }

refresh_caches() {
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$DATA_HOME/applications" 2>/dev/null || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1 && [[ -d "$DATA_HOME/icons/hicolor" ]]; then
        gtk-update-icon-cache -q -f -t "$DATA_HOME/icons/hicolor" 2>/dev/null || true
    fi
}

uninstall() {
    local removed=0
    if [[ -f "$MANIFEST" ]]; then
        while IFS= read -r path; do
            if [[ "$path" == "#venv "* ]]; then VENV="${path#\#venv }"; continue; fi
            [[ -z "$path" || "$path" == "#"* ]] && continue
            if [[ -L "$path" || -f "$path" ]]; then
                rm -f -- "$path"
                removed=$((removed + 1))
            fi
        done < "$MANIFEST"
        rm -f -- "$MANIFEST"
    fi
    # whatever an older install left, even without a manifest
    rm -f -- "$DATA_HOME/applications/$APP_ID.desktop" "$DATA_HOME/metainfo/$APP_ID.metainfo.xml"
    find "$DATA_HOME/icons/hicolor" -path "*/apps/$APP_ID.*" -delete 2>/dev/null || true
    for link in "$BIN_HOME/diffusion-desk" "$BIN_HOME/diffusion-desk-cli"; do
        if [[ -L "$link" && "$(readlink "$link")" == "$APP_HOME/"* ]]; then rm -f -- "$link"; fi
    done
    if [[ -f "$VENV/$MARKER" ]]; then  # only an environment this script made
        rm -rf -- "$VENV"
        say "removed the environment $VENV"
    fi
    rmdir "$APP_HOME" 2>/dev/null || true
    refresh_caches
    say "Diffusion Desk uninstalled. Your history, settings and logs are kept:"
    say "  data $DATA_HOME/diffusion-desk, settings ${XDG_CONFIG_HOME:-$HOME/.config}/diffusion-desk, logs ${XDG_STATE_HOME:-$HOME/.local/state}/diffusion-desk"
}

install_python_side() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV"
        touch "$VENV/$MARKER"
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        say "torch already there: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
    elif [[ -n "${TORCH_CUDA:-}" ]] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
        say "installing PyTorch with CUDA (${TORCH_CUDA:-cu128}; several GB)"
        "${pip[@]}" install "torch==$TORCH_VERSION" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA:-cu128}" \
            || "${pip[@]}" install "torch==$TORCH_VERSION"
    else
        say "installing PyTorch for the CPU"
        "${pip[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
            || "${pip[@]}" install "torch==$TORCH_VERSION"
    fi
    local wheel="$WHEEL" tmp=""
    if [[ -z "$wheel" ]]; then
        say "building Diffusion Desk from $REPO"
        tmp="$(mktemp -d)"
        "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$tmp" "$REPO"
        wheel="$(ls "$tmp"/diffusion_desk-*.whl)"
    fi
    say "installing $(basename "$wheel")"
    # shellcheck disable=SC2086 - PIP_ARGS is a list of words on purpose
    if [[ " ${PIP_ARGS:-} " != *" --no-deps "* ]]; then
        "${pip[@]}" install ${PIP_ARGS:-} "$wheel"  # the app's dependencies (already satisfied ones stay)
    fi
    # this build of the app, even when the version number did not change
    "${pip[@]}" install --force-reinstall --no-deps ${PIP_ARGS:-} "$wheel"
    [[ -n "$tmp" ]] && rm -rf -- "$tmp"
    return 0
}

record() { printf '%s\n' "$1" >> "$MANIFEST.new"; }

install_file() {  # install_file SRC DEST [MODE]
    mkdir -p "$(dirname "$2")"
    install -m "${3:-644}" "$1" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
    record "$2"
}

install_desktop_side() {
    local exe cli
    if [[ -n "$BUNDLE" ]]; then
        exe="$BUNDLE/diffusion-desk"
        cli="$exe"  # the bundle's program is both (it has a console on Linux)
    else
        exe="$VENV/bin/diffusion-desk"
        cli="$VENV/bin/diffusion-desk-cli"
    fi
    if [[ ! -x "$exe" ]]; then
        echo "error: $exe is missing (run without --no-pip, or point --venv / --bundle at an install of Diffusion Desk)" >&2
        exit 1
    fi
    mkdir -p "$APP_HOME" "$BIN_HOME"
    if [[ -n "$BUNDLE" ]]; then : > "$MANIFEST.new"; else printf '#venv %s\n' "$VENV" > "$MANIFEST.new"; fi
    # command-line launchers; the menu entry uses the absolute path, so ~/.local/bin need not be on PATH
    ln -sfn "$exe" "$BIN_HOME/diffusion-desk"
    record "$BIN_HOME/diffusion-desk"
    if [[ -x "$cli" ]]; then
        ln -sfn "$cli" "$BIN_HOME/diffusion-desk-cli"
        record "$BIN_HOME/diffusion-desk-cli"
    fi
    # the launcher entry, pointing at this install
    local desktop="$DATA_HOME/applications/$APP_ID.desktop"
    mkdir -p "$(dirname "$desktop")"
    sed -e "s|^Exec=diffusion-desk |Exec=\"$exe\" |" -e "s|^TryExec=diffusion-desk\$|TryExec=$exe|" \
        "$HERE/$APP_ID.desktop" > "$desktop.tmp.$$"
    chmod 644 "$desktop.tmp.$$"
    mv -f "$desktop.tmp.$$" "$desktop"
    record "$desktop"
    install_file "$HERE/$APP_ID.metainfo.xml" "$DATA_HOME/metainfo/$APP_ID.metainfo.xml"
    local icon
    while IFS= read -r icon; do
        install_file "$HERE/icons/$icon" "$DATA_HOME/icons/$icon"
    done < <(cd "$HERE/icons" && find hicolor -type f -name "$APP_ID.*" | sort)
    mv -f "$MANIFEST.new" "$MANIFEST"
    refresh_caches
}

if [[ "$ACTION" == uninstall ]]; then
    uninstall
    exit 0
fi
if [[ -n "$BUNDLE" ]]; then
    BUNDLE="$(cd "$BUNDLE" && pwd)"
else
    if [[ "$NO_PIP" == 0 ]]; then
        install_python_side
    fi
    VENV="$(cd "$VENV" 2>/dev/null && pwd || echo "$VENV")"
fi
install_desktop_side
say "Diffusion Desk $("$BIN_HOME/diffusion-desk-cli" --version 2>/dev/null | awk '{print $NF}') installed:"
say "  menu entry  $DATA_HOME/applications/$APP_ID.desktop"
say "  command     $BIN_HOME/diffusion-desk (add $BIN_HOME to PATH if your shell does not find it)"
say "  remove with bash $0 --uninstall"
