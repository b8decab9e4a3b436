"""Regional prompts on the built-in model: "a red circle" in the left half, "a blue square" in the right one.

Each half of a 128x64 picture is classified with tools/shapes.py; a region succeeds when its half shows the named
colour and shape. Seeds 2000.. are held out (the prompts and settings were tried on seeds 1000-1009 only).
Also times a run with the two regions in each mode against the same run without them (median of interleaved runs).
    python bench/regional_prompts.py [--mode attention|latent] [--seeds 30] [--threads 2] [--variant plain|position]
        [--height 64|128] [--guidance G] [--steps N]
The latent mode is tuned on the "plain" prompts (default for it), the attention mode on "position".
"""

from __future__ import annotations

import argparse
import time

from _common import median

VARIANTS = {
    # base prompt, left region, right region
    "plain": ("on a white background", "a red circle on a white background", "a blue square on a white background"),
    "position": (
        "on a white background",
        "a red circle at the left on a white background",
        "a blue square at the right on a white background",
    ),
}


def halves_requests(
    variant: str,
    seed: int,
    guidance: float | None = None,
    mode: str = "latent",
    height: int = 64,
    steps: int | None = None,
    batch: int = 1,
):
    """The two-region job: the left and right halves of a 128 x `height` canvas (None: the model's defaults)."""
    from PIL import Image

    from desktop_app.core.requests import GenerateRequest, RegionPrompt

    base, left_prompt, right_prompt = VARIANTS[variant]
    left = Image.new("L", (128, height), 0)
    left.paste(255, (0, 0, 64, height))
    right = Image.new("L", (128, height), 0)
    right.paste(255, (64, 0, 128, height))
    return GenerateRequest(
        prompt=base,
        width=128,
        height=height,
        seed=seed,
        batch=batch,
        guidance=guidance,
        steps=steps,
        previews=False,
        trajectory=False,
        region_mode=mode,
        regions=(RegionPrompt(left_prompt, left), RegionPrompt(right_prompt, right)),
    )


def score(image) -> tuple[bool, bool, dict, dict]:
    """(left right?, right right?, left classification, right classification)."""
    from tools.shapes import classify

    w, h = image.size
    left, right = classify(image.crop((0, 0, w // 2, h))), classify(image.crop((w // 2, 0, w, h)))
    return (
        (left["colour"], left["shape"]) == ("red", "circle"),
        (right["colour"], right["shape"]) == ("blue", "square"),
        left,
        right,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("attention", "latent"), default="latent")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None, help="default: plain (latent), position")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--height", type=int, choices=(64, 128), default=64)
    parser.add_argument("--first-seed", type=int, default=2000, help="2000..: held out; tune on 1000-1009")
    parser.add_argument("--timing-runs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from desktop_app.engine.engine import Engine

    torch.set_num_threads(args.threads)
    variant = args.variant or ("plain" if args.mode == "latent" else "position")
    engine = Engine(device="cpu")
    ok_left = ok_right = ok_both = 0

    def job(seed: int, mode: str = args.mode):
        return halves_requests(variant, seed, args.guidance, mode, args.height, args.steps)

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = engine.run(job(seed))
        left_ok, right_ok, left, right = score(result.images[0])
        ok_left += left_ok
        ok_right += right_ok
        ok_both += left_ok and right_ok
        print(f"seed {seed}: left {left['colour']} {left['shape']}  right {right['colour']} {right['shape']}")
    n = args.seeds
    if n:
        print(
            f"{args.mode} mode, variant {variant}, 128x{args.height}, seeds {args.first_seed}-{args.first_seed + n - 1}:"
            f" left region {ok_left / n:.0%}, right region {ok_right / n:.0%}, both {ok_both / n:.0%}"
        )
    if not args.timing_runs:
        return
    timings: dict[str, list[float]] = {"none": [], "attention": [], "latent": []}
    for i in range(args.timing_runs):
        for mode, times in timings.items():
            request = job(3000 + i, "attention" if mode == "none" else mode)
            request = request.replace(regions=()) if mode == "none" else request
            started = time.perf_counter()
            result = engine.run(request)
            times.append((time.perf_counter() - started) / (result.request.steps or 1))
    none, attention, latent = (median(t) for t in timings.values())
    print(
        f"per step (whole run / steps, 2 regions): {none * 1000:.1f} ms without regions, "
        f"attention {attention * 1000:.1f} ms ({attention / none - 1:+.0%}), "
        f"latent {latent * 1000:.1f} ms ({latent / none - 1:+.0%}; {latent / attention - 1:+.0%} against attention)"
    )


if __name__ == "__main__":
    main()
