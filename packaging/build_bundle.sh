#!/usr/bin/env bash
# Build the one-folder bundle (Python, Qt, torch, diffusers and the built-in model) with PyInstaller, then check it.
#
#   bash packaging/build_bundle.sh              # -> dist/bundle/diffusion-desk/diffusion-desk, checked with --smoke
#   bash packaging/build_bundle.sh --archive    # also dist/diffusion-desk-<version>-linux-<arch>.tar.gz
#   bash packaging/build_bundle.sh --no-smoke   # build only
#   bash packaging/build_bundle.sh --clean      # forget PyInstaller's cache from earlier builds
#   bash packaging/build_bundle.sh --xvfb       # also run the smoke test on a real X server (xvfb-run)
#
# Environment: PYTHON (default .venv/bin/python), DIST (default dist/bundle), WORK (default build/pyinstaller),
# SMOKE_MODEL (a model folder for the check instead of the built-in one, e.g. a tiny test model),
# ALLOW_NO_MODEL=1 (build even when resources/models/shapes is missing; the bundle then has no built-in model).
# The bundle uses the torch that PYTHON has: the CPU build gives a bundle of about 1 GB, a CUDA build several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DIST=${DIST:-dist/bundle}
WORK=${WORK:-build/pyinstaller}
SMOKE=1
ARCHIVE=0
CLEAN=()
XVFB=0
for arg in "$@"; do
    case "$arg" in
        --no-smoke) SMOKE=0 ;;
        --archive) ARCHIVE=1 ;;
        --clean) CLEAN=(--clean) ;;
        --xvfb) XVFB=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg" >&2; exit 2 ;;
    esac
done

if [[ ! -f resources/models/shapes/model_index.json ]]; then
    if [[ "${ALLOW_NO_MODEL:-0}" != 1 ]]; then
        echo "error: the built-in model (resources/models/shapes) is missing; set ALLOW_NO_MODEL=1 to build without it" >&2
        exit 1
    fi
    echo "warning: building without the built-in model" >&2
fi
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
    "$PY" -m pip install --disable-pip-version-check "pyinstaller>=6.10"
fi

VERSION=$("$PY" -c "import desktop_app; print(desktop_app.__version__)")
echo "building Diffusion Desk $VERSION with $("$PY" -m PyInstaller --version) (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
start=$(date +%s)
"$PY" -m PyInstaller --noconfirm "${CLEAN[@]}" --log-level "${PYI_LOG_LEVEL:-WARN}" \
    --distpath "$DIST" --workpath "$WORK" packaging/pyinstaller/diffusion-desk.spec
build_s=$(( $(date +%s) - start ))
APP="$(cd "$DIST/diffusion-desk" && pwd)"
BIN="$APP/diffusion-desk"
# the launcher entry, icons and install script, so the unpacked folder can put itself in the menu:
#   bash diffusion-desk/linux/install.sh   (and --uninstall)
rm -rf "$APP/linux"
mkdir -p "$APP/linux"
cp -r packaging/linux/install.sh packaging/linux/icons packaging/linux/*.desktop packaging/linux/*.metainfo.xml "$APP/linux/"
chmod -R a+rX "$APP"  # readable by every user when unpacked system-wide (model exports can be 0600)
size_mb=$(du -sm "$APP" | cut -f1)
files=$(find "$APP" -type f | wc -l)
echo "built $APP in ${build_s} s: ${size_mb} MB, ${files} files"

smoke_s=-
if [[ "$SMOKE" == 1 ]]; then
    "$BIN" --version
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    start=$(date +%s)
    # from another folder, with no repository or virtual environment on any path
    (cd "$tmp" && env -u PYTHONPATH -u VIRTUAL_ENV QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 \
        ${SMOKE_MODEL:+DIFFUSION_DESK_SMOKE_MODEL="$SMOKE_MODEL"} \
        "$BIN" --data-dir "$tmp/data" --smoke)
    smoke_s=$(( $(date +%s) - start ))
    echo "smoke test passed in ${smoke_s} s"
    if [[ "$XVFB" == 1 ]] && command -v xvfb-run >/dev/null; then
        (cd "$tmp" && env -u PYTHONPATH -u VIRTUAL_ENV QT_QPA_PLATFORM=xcb HF_HUB_OFFLINE=1 \
            ${SMOKE_MODEL:+DIFFUSION_DESK_SMOKE_MODEL="$SMOKE_MODEL"} \
            xvfb-run -a "$BIN" --data-dir "$tmp/data-x" --smoke)
        echo "smoke test under Xvfb passed"
    fi
fi

if [[ "$ARCHIVE" == 1 ]]; then
    tarball="dist/diffusion-desk-$VERSION-linux-$(uname -m).tar.gz"
    tar -C "$DIST" -czf "$tarball" diffusion-desk
    echo "archive: $tarball ($(du -sm "$tarball" | cut -f1) MB)"
fi
mkdir -p dist
printf 'version=%s\nbuild_seconds=%s\nsize_mb=%s\nfiles=%s\nsmoke_seconds=%s\ntorch=%s\n' \
    "$VERSION" "$build_s" "$size_mb" "$files" "$smoke_s" "$("$PY" -c 'import torch; print(torch.__version__)')" > dist/bundle-report.txt
cat dist/bundle-report.txt
