"""Seamless inpainting measured on the built-in shapes model (an evaluation, not a test).

Held-out shapes pictures (captions never seen in training, jittered renders, tools/shapes.py) go through
`Engine.run` as a user's jobs do, and the script prints three tables:

1. Outpaint 32 px on each side (64x64 -> 128x128, prompt = the source's caption): the share of results whose
   background (tools/shapes.classify on the new area's border) is the source's, and the mean colour distance
   (mean |dRGB| summed over channels) of the new area to the source's own background pixels.
2. Seam visibility of an inpaint of a box over the picture's right part (prompt = the source's caption, so the
   fill should continue the picture): the mean gradient magnitude on the pixels within 2 px of the mask's border
   (and of the band's outer edge, the larger) over the same measure in the source, floored by the source's mean
   gradient over the whole picture (its flat backgrounds have none). 1.0: the border is no sharper than the
   source; the VAE round trip alone leaves a little.
3. Pixels outside mask + band after 10 rounds of inpainting the same picture with the same mask (each round's
   result is the next round's source): identical (yes / no) and the count of differing pixels.

Each table compares the plain paste-back with the blend band, the colour match and soft masks.

    python bench/inpaint_quality.py [--n 8] [--steps 20] [--rounds 10] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import numpy as np
from _common import ROOT  # noqa: F401 - puts the repository and tests/ on sys.path
from PIL import Image

from desktop_app.core.modelinfo import builtin_model_path  # noqa: E402
from desktop_app.core.requests import InpaintRequest  # noqa: E402
from desktop_app.engine.blending import band_region, spread  # noqa: E402
from desktop_app.engine.engine import Engine  # noqa: E402
from tools import shapes  # noqa: E402

VARIANTS: dict[str, dict] = {
    "plain": {},
    "band 8": {"blend_band": 8},
    "band 8 + colour": {"blend_band": 8, "color_match": True},
    "soft + band 8 + colour": {"soft_mask": True, "blend_band": 8, "color_match": True},
}
OUTPAINT_VARIANTS = ("plain", "band 8", "band 8 + colour")
MASK_BOX = (36, 6, 62, 58)  # the picture's right part: background and, for most pictures, part of the shape


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def held_out(n: int) -> list[tuple[dict, Image.Image]]:
    rng = random.Random(7)
    return [(spec, shapes.render(spec, 64, rng)) for spec in shapes.heldout_specs()[:n]]


def box_mask(soft: bool) -> Image.Image:
    """The painted box; soft: its 6 px inner edge painted grey (a feathered selection)."""
    mask = np.zeros((64, 64), np.uint8)
    x0, y0, x1, y1 = MASK_BOX
    mask[y0:y1, x0:x1] = 255
    if soft:
        inside, _ = spread(np.where(mask > 0, 0, 255).astype(np.uint8), 6)  # distance from outside into the box
        ramp = np.clip(inside / 6.0, 0, 1) * 255
        mask = np.where(mask > 0, np.rint(ramp), 0).astype(np.uint8)
    return Image.fromarray(mask, "L")


def gradient(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude per pixel (H, W): forward differences, summed over channels."""
    gx = np.zeros(image.shape[:2])
    gy = np.zeros(image.shape[:2])
    gx[:, :-1] = np.abs(np.diff(image, axis=1)).sum(-1)
    gy[:-1] = np.abs(np.diff(image, axis=0)).sum(-1)
    return np.hypot(gx, gy)


def edge_pixels(mask: Image.Image, width: int = 2) -> np.ndarray:
    """Pixels within `width` px of the border of mask > 0, on both sides."""
    values = np.asarray(mask.convert("L"))
    outside, _ = spread(values, width)
    inside, _ = spread(np.where(values > 0, 0, 255).astype(np.uint8), width)
    return ((outside >= 1) & (outside <= width)) | ((values > 0) & (inside <= width))


def seam_ratio(result: Image.Image, source: Image.Image, mask: Image.Image, band: int) -> float:
    res, src = gradient(arr(result)), gradient(arr(source))
    floor = max(float(src.mean()), 1e-6)
    ratios = []
    for edge in (edge_pixels(mask), edge_pixels(band_region(mask, band)) if band else None):
        if edge is not None and edge.any():
            ratios.append(float(res[edge].mean()) / max(float(src[edge].mean()), floor))
    return max(ratios)


def outpaint_table(engine, model, items, steps) -> None:
    print("\n1. Outpaint 32 px on each side (64x64 -> 128x128)")
    print(f"{'variant':<26}{'background right':>18}{'new area dRGB':>15}{'s / image':>11}")
    for name in OUTPAINT_VARIANTS:
        right, distances, times = 0, [], []
        for i, (spec, image) in enumerate(items):
            request = InpaintRequest(
                prompt=shapes.caption(spec),
                model=model,
                image=image,
                extend=(32, 32, 32, 32),
                steps=steps,
                seed=1000 + i,
                **VARIANTS[name],
            )
            started = time.perf_counter()
            out = engine.run(request).images[0]
            times.append(time.perf_counter() - started)
            pixels = arr(out)
            new = np.ones(pixels.shape[:2], bool)
            new[32:96, 32:96] = False
            src = arr(image)
            background = np.asarray(shapes.PALETTE[spec["background"]], np.float64)
            near_bg = np.abs(src - background).sum(-1) < 60  # the source's own background pixels
            source_bg = src[near_bg].mean(0) if near_bg.any() else background
            distances.append(float(np.abs(pixels[new].mean(0) - source_bg).sum()))
            right += shapes.classify(out)["background"] == spec["background"]
        print(f"{name:<26}{right}/{len(items):<15}{statistics.mean(distances):>15.1f}{statistics.median(times):>11.2f}")


def seam_table(engine, model, items, steps) -> None:
    print("\n2. Seam visibility (gradient at the border / the source's; 1.0 = invisible)")
    print(f"{'variant':<26}{'median':>8}{'mean':>8}{'worst':>8}")
    for name, options in VARIANTS.items():
        ratios = []
        mask = box_mask(bool(options.get("soft_mask")))
        for i, (spec, image) in enumerate(items):
            request = InpaintRequest(
                prompt=shapes.caption(spec), model=model, image=image, mask=mask, steps=steps, seed=2000 + i, **options
            )
            out = engine.run(request).images[0]
            ratios.append(seam_ratio(out, image, mask, int(options.get("blend_band", 0))))
        print(f"{name:<26}{statistics.median(ratios):>8.2f}{statistics.mean(ratios):>8.2f}{max(ratios):>8.2f}")


def rounds_table(engine, model, items, steps, rounds) -> None:
    print(f"\n3. Pixels outside mask + band after {rounds} rounds")
    print(f"{'variant':<26}{'identical':>10}{'differing px':>14}{'repainted dRGB':>16}")
    for name, options in VARIANTS.items():
        mask = box_mask(bool(options.get("soft_mask")))
        keep = np.asarray(band_region(mask, int(options.get("blend_band", 0)))) == 0
        inside = np.asarray(mask) == 255
        differing, change = 0, []
        for i, (spec, original) in enumerate(items):
            image = original
            prompt = shapes.caption(dict(spec, background=shapes.COLOURS[(i + 3) % len(shapes.COLOURS)]))
            for r in range(rounds):
                request = InpaintRequest(
                    prompt=prompt, model=model, image=image, mask=mask, steps=steps, seed=3000 + 17 * i + r, **options
                )
                image = engine.run(request).images[0]
            out, src = arr(image), arr(original)
            differing += int((out[keep] != src[keep]).any(-1).sum())
            change.append(float(np.abs(out[inside] - src[inside]).sum(-1).mean()))
        identical = "yes" if differing == 0 else "no"
        print(f"{name:<26}{identical:>10}{differing:>14}{statistics.mean(change):>16.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(builtin_model_path()))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=8, help="held-out pictures")
    ap.add_argument("--rounds-n", type=int, default=3, help="pictures for the rounds table")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], choices=["outpaint", "seam", "rounds"])
    ap.add_argument("--quick", action="store_true", help="2 pictures, 8 steps: a plumbing check")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds_n, args.steps = 2, 1, 8
    from pathlib import Path

    if not (Path(args.model) / "model_index.json").is_file():
        print(f"No model at {args.model}: train the built-in model first (tools/train_builtin.py).")
        return 1
    import torch

    torch.set_num_threads(1)
    engine = Engine(device=args.device)
    items = held_out(args.n)
    print(f"model {args.model}  device {engine.device}  held-out pictures {len(items)}  steps {args.steps}")
    if "outpaint" not in args.skip:
        outpaint_table(engine, args.model, items, args.steps)
    if "seam" not in args.skip:
        seam_table(engine, args.model, items, args.steps)
    if "rounds" not in args.skip:
        rounds_table(engine, args.model, items[: args.rounds_n], args.steps, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
