"""What the latent previewer costs a model load: fit (the old way, every load) vs known map vs cached fit vs TAESD.

    python bench/preview_load.py [--repeats 5] [--threads 0] [--json]

An SD 1.5-size VAE (AutoencoderKL with SD's config: 83.7M parameters) with random weights on this machine:
  fit      engine.preview.fit_previewer: encode + decode 32 images of 64x64 and a least-squares fit (what every
           load paid before), timed once per repeat through previewer_for with an unknown family and an empty cache
  cached   previewer_for, the same model again: the map read from the preview cache (no VAE call)
  known    previewer_for with family "sd1": ComfyUI's SD 1.5 map, no VAE call, nothing read
  taesd    previewer_for with a TAESD folder in the data dir (random weights, the real architecture): the
           previewer made at load (the decoder is loaded lazily), then its first preview (loads the decoder) and a
           later one, at a 64x64 latent (a 512x512 preview)
Prints median seconds and the ratio of fit to each. Target: known and cached at least 100x cheaper than fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the cheap paths (fit: min(3, repeats))")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="preview-load-"))
    os.environ["DIFFUSION_DESK_DATA_DIR"] = str(work / "data")

    import numpy as np
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from desktop_app.core import paths
    from desktop_app.engine.preview import TaesdPreviewer, previewer_for

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(  # stable-diffusion-v1-5/vae/config.json
        block_out_channels=(128, 256, 512, 512),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    ).eval()
    params = sum(p.numel() for p in vae.parameters())

    fits, cached, known = [], [], []
    for _ in range(max(1, min(3, args.repeats))):
        shutil.rmtree(paths.preview_cache_dir(), ignore_errors=True)  # a first load: nothing cached
        fits.append(timed(previewer_for, vae, "unknown", "0123abcd")[0])
    for _ in range(args.repeats):
        cached.append(timed(previewer_for, vae, "unknown", "0123abcd")[0])  # the same model loaded again
        known.append(timed(previewer_for, vae, "sd1", "0123abcd")[0])

    AutoencoderTiny().save_pretrained(str(paths.taesd_dir() / "taesd"))  # random weights, TAESD's architecture
    made, first, later = [], [], []
    latent = np.random.default_rng(0).normal(size=(4, 64, 64)).astype(np.float32)
    for _ in range(args.repeats):
        seconds, found = timed(previewer_for, vae, "sd1", "0123abcd")
        assert isinstance(found, TaesdPreviewer)
        made.append(seconds)
        seconds, image = timed(found.project, latent)
        assert getattr(image, "shape", None) == (512, 512, 3)
        first.append(seconds)
        later.append(timed(found.project, latent)[0])

    fit = median(fits)
    rows = {
        "fit": fit,
        "cached": median(cached),
        "known": median(known),
        "taesd (load)": median(made),
        "taesd (first preview)": median(first),
        "taesd (each preview)": median(later),
    }
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"vae_parameters": params, "threads": torch.get_num_threads(), "seconds": rows}))
        return 0
    print(f"SD 1.5-size VAE, {params / 1e6:.1f}M parameters, random weights, CPU, {torch.get_num_threads()} threads")
    print(f"{'what':24} {'seconds':>10} {'fit / this':>11}")
    for name, seconds in rows.items():
        ratio = f"{fit / seconds:,.0f}x" if seconds > 0 and name != "fit" else ""
        print(f"{name:24} {seconds:10.5f} {ratio:>11}")
    ok = rows["known"] * 100 <= fit and rows["cached"] * 100 <= fit
    print("target (known and cached >= 100x cheaper than fit):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
