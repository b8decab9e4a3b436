"""Engine.run (previews and trajectory on) against a plain diffusers pipeline call on the same model and settings.

Interleaved runs, median of each; prints `engine/diffusers time ratio: X` (target <= 1.05).
    python bench/engine_overhead.py [--runs 7] [--steps 20] [--model PATH]
"""

from __future__ import annotations

import argparse
import time

from _common import bench_model, median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()

    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from desktop_app.core.modelinfo import model_defaults
    from desktop_app.core.requests import GenerateRequest
    from desktop_app.engine.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or bench_model()
    defaults = model_defaults(model)
    width, height, guidance = defaults["width"], defaults["height"], defaults["guidance"]
    engine = Engine()
    plain = StableDiffusionPipeline.from_pretrained(
        model, dtype=engine.dtype, safety_checker=None, requires_safety_checker=False
    ).to(engine.device)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    request = GenerateRequest(
        prompt="a red circle on a blue background",
        model=model,
        steps=args.steps,
        guidance=guidance,
        width=width,
        height=height,
        seed=1,
        scheduler="ddim",
        previews=True,
        trajectory=True,
    )

    def run_engine() -> float:
        events = []
        start = time.perf_counter()
        engine.run(request, events.append)
        return time.perf_counter() - start

    def run_plain() -> float:
        start = time.perf_counter()
        plain(
            "a red circle on a blue background",
            num_inference_steps=args.steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )
        return time.perf_counter() - start

    # warm-up: load, first-call allocations
    run_engine()
    run_plain()
    engine_times, plain_times = [], []
    for _ in range(args.runs):
        engine_times.append(run_engine())
        plain_times.append(run_plain())
    e, p = median(engine_times), median(plain_times)
    print(f"model: {model} ({width}x{height}, {args.steps} steps, CFG {guidance}, {engine.device})")
    print(f"engine median {e * 1000:.1f} ms, diffusers median {p * 1000:.1f} ms over {args.runs} runs each")
    print(f"engine/diffusers time ratio: {e / p:.3f}")


if __name__ == "__main__":
    main()
