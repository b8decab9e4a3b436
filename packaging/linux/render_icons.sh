#!/usr/bin/env bash
# Re-render the app icon's PNGs from resources/icons/diffusion-desk.svg (needs rsvg-convert: Debian librsvg2-bin).
# Writes resources/icons/diffusion-desk-N.png (the app's window icon) and the hicolor tree under packaging/linux/icons.
set -euo pipefail
cd "$(dirname "$0")/../.."
APP_ID=io.github.diffusiondesk.DiffusionDesk
SVG=resources/icons/diffusion-desk.svg
mkdir -p packaging/linux/icons/hicolor/scalable/apps
cp "$SVG" "packaging/linux/icons/hicolor/scalable/apps/$APP_ID.svg"
for n in 16 24 32 48 64 128 256 512; do
    dir=packaging/linux/icons/hicolor/${n}x${n}/apps
    mkdir -p "$dir"
    rsvg-convert -w "$n" -h "$n" "$SVG" -o "resources/icons/diffusion-desk-$n.png"
    cp "resources/icons/diffusion-desk-$n.png" "$dir/$APP_ID.png"
done
echo "icons rendered"
