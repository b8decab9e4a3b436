"""Regional prompts on the built-in model: "a red circle" in the left half, "a blue square" in the right one.

Each half of a 128x64 picture is classified with tools/shapes.py; a region succeeds when its half shows the named
colour and shape. Seeds 2000.. are held out (the prompts and settings were tried on seeds 1000-1009 only).
Also times a run with the two regions against the same run without them (median of interleaved runs).
    python bench/regional_prompts.py [--seeds 30] [--threads 2] [--variant plain|position]
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


def halves_requests(variant: str, seed: int, guidance: float | None = None):
    from PIL import Image

    from desktop_app.core.requests import GenerateRequest, RegionPrompt

    base, left_prompt, right_prompt = VARIANTS[variant]
    left = Image.new("L", (128, 64), 0)
    left.paste(255, (0, 0, 64, 64))
    right = Image.new("L", (128, 64), 0)
    right.paste(255, (64, 0, 128, 64))
    return GenerateRequest(
        prompt=base,
        width=128,
        height=64,
        seed=seed,
        guidance=guidance,
        previews=False,
        trajectory=False,
        regions=(RegionPrompt(left_prompt, left), RegionPrompt(right_prompt, right)),
    )


def score(image) -> tuple[bool, bool, dict, dict]:
    """(left right?, right right?, left classification, right classification)."""
    from tools.shapes import classify

    left, right = classify(image.crop((0, 0, 64, 64))), classify(image.crop((64, 0, 128, 64)))
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
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="position")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--timing-runs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from desktop_app.engine.engine import Engine

    torch.set_num_threads(args.threads)
    engine = Engine(device="cpu")
    ok_left = ok_right = ok_both = 0
    for seed in range(2000, 2000 + args.seeds):
        result = engine.run(halves_requests(args.variant, seed, args.guidance))
        left_ok, right_ok, left, right = score(result.images[0])
        ok_left += left_ok
        ok_right += right_ok
        ok_both += left_ok and right_ok
        print(f"seed {seed}: left {left['colour']} {left['shape']}  right {right['colour']} {right['shape']}")
    n = args.seeds
    print(
        f"variant {args.variant}: left region {ok_left / n:.0%}, right region {ok_right / n:.0%}, both {ok_both / n:.0%}"
    )

    with_regions, without = [], []
    for i in range(args.timing_runs):
        request = halves_requests(args.variant, 3000 + i, args.guidance)
        for timings, req in ((with_regions, request), (without, request.replace(regions=()))):
            started = time.perf_counter()
            result = engine.run(req)
            timings.append((time.perf_counter() - started) / (result.request.steps or 1))
    a, b = median(with_regions), median(without)
    print(f"per step: {a * 1000:.1f} ms with 2 regions, {b * 1000:.1f} ms without: overhead {a / b - 1:+.0%}")


if __name__ == "__main__":
    main()
