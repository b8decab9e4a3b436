"""Evaluate the built-in "Shapes" model on held-out captions.

For the first --n held-out captions of tools/shapes.py (sentences never used in
training) it generates one picture each with StableDiffusionPipeline + DDIM
(seed --seed + i), classifies it with the pixel classifier of tools/shapes.py
and prints attribute accuracies.  It also measures DDIM inversion
reconstruction PSNR (DDIMInverseScheduler, --inv-steps steps, guidance 1, then
DDIM sampling back; against the VAE reconstruction encode->decode of the
rendered picture) and the time for 20 steps at 64x64 with guidance (batch 1).

Defaults for --steps / --guidance come from <model>/diffusion_desk.json.

  python tools/eval_builtin.py                      # default settings, 200 captions
  python tools/eval_builtin.py --n 48 --guidance 2 3 5 --no-inversion
  python tools/eval_builtin.py --write-json         # store the figures in diffusion_desk.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import shapes  # noqa: E402

if TYPE_CHECKING:
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

DEFAULT_MODEL = ROOT / "resources" / "models" / "shapes"


def load_pipe(model: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def generate(pipe, prompts, seeds, steps, guidance, batch=25):
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        with torch.no_grad():
            ims = pipe(
                prompts[i : i + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                height=64,
                width=64,
            ).images
        out.extend(ims)
    return out


def accuracy(pipe, specs, steps, guidance, seed, batch=25):
    prompts = [shapes.caption(s) for s in specs]
    seeds = [seed + i for i in range(len(specs))]
    t0 = time.time()
    imgs = generate(pipe, prompts, seeds, steps, guidance, batch)
    dt = time.time() - t0
    tot = {k: [0, 0] for k in ("colour", "background", "shape", "position", "size")}
    for s, im in zip(specs, imgs):
        for k, v in shapes.score(s, shapes.classify(im)).items():
            if v is not None:
                tot[k][0] += int(v)
                tot[k][1] += 1
    acc = {k: (c / m if m else float("nan")) for k, (c, m) in tot.items()}
    counts = {k: m for k, (c, m) in tot.items()}
    return acc, counts, imgs, dt


def save_grid(imgs, path, cols=8, scale=2):
    from PIL import Image

    rows = math.ceil(len(imgs) / cols)
    g = Image.new("RGB", (64 * cols, 64 * rows), (128, 128, 128))
    for i, im in enumerate(imgs):
        g.paste(im.resize((64, 64)), (64 * (i % cols), 64 * (i // cols)))
    g = g.resize((64 * cols * scale, 64 * rows * scale), Image.Resampling.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    g.save(path)


@torch.no_grad()
def inversion_psnr(pipe, n=20, steps=50, seed=0):
    """Mean PSNR (dB) of DDIM inversion + DDIM sampling (guidance 1) vs the VAE reconstruction."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    vae, unet = pipe.vae, pipe.unet
    sf = vae.config.scaling_factor
    inv = cast("DDIMInverseScheduler", DDIMInverseScheduler.from_config(pipe.scheduler.config))
    fwd = cast("DDIMScheduler", DDIMScheduler.from_config(pipe.scheduler.config))
    specs = shapes.heldout_specs()[:n]
    rng = random.Random(seed + 99)
    vals = []
    for s in specs:
        img = shapes.render(s, 64, rng)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
        z0 = vae.encode(x).latent_dist.mode() * sf
        ref = vae.decode(z0 / sf).sample.clamp(-1, 1)
        ids = pipe.tokenizer(
            [shapes.caption(s)],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        cond = pipe.text_encoder(ids)[0]
        z = z0.clone()
        inv.set_timesteps(steps)
        for t in inv.timesteps:
            pred = unet(z, t, encoder_hidden_states=cond).sample  # the model's output (epsilon or v)
            # diffusers types step()'s timestep int (a tensor works) and its result as output-or-tuple
            z = cast("DDIMSchedulerOutput", inv.step(pred, t, z)).prev_sample  # pyright: ignore[reportArgumentType]
        fwd.set_timesteps(steps)
        for t in fwd.timesteps:
            pred = unet(z, t, encoder_hidden_states=cond).sample  # the model's output (epsilon or v)
            z = cast("DDIMSchedulerOutput", fwd.step(pred, t, z)).prev_sample  # pyright: ignore[reportArgumentType]
        rec = vae.decode(z / sf).sample.clamp(-1, 1)
        mse = ((rec - ref) / 2).pow(2).mean().item()
        vals.append(10 * math.log10(1 / max(mse, 1e-12)))
    return float(np.mean(vals)), vals


def timing(pipe, guidance, steps=20, reps=5):
    prompt = "a red circle on a blue background"
    g = torch.Generator("cpu").manual_seed(0)
    pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=64, width=64)
    ts = []
    for _ in range(reps):
        g = torch.Generator("cpu").manual_seed(0)
        t0 = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=64, width=64)
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=200, help="number of held-out captions")
    ap.add_argument("--guidance", type=float, nargs="*", default=None, help="one or more guidance scales")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inv-n", type=int, default=20)
    ap.add_argument("--inv-steps", type=int, default=50)
    ap.add_argument("--no-inversion", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--grid", type=Path, default=None, help="save a PNG grid of the first 48 pictures")
    ap.add_argument("--write-json", action="store_true", help="write the figures into diffusion_desk.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta_p = args.model / "diffusion_desk.json"
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    steps = args.steps or int(meta.get("steps", 20))
    guidances = args.guidance or [float(meta.get("guidance", 4.0))]
    pipe = load_pipe(args.model)
    specs = shapes.heldout_specs()[: args.n]
    print(f"model {args.model}  held-out captions {len(specs)}  steps {steps}  DDIM  seeds {args.seed}..")
    rows = []
    print(
        f"{'guidance':>8} | {'shape colour':>12} | {'background':>10} | {'shape kind':>10} | "
        f"{'position':>8} | {'size':>6} | {'gen s':>6}"
    )
    for gsc in guidances:
        acc, counts, imgs, dt = accuracy(pipe, specs, steps, gsc, args.seed, args.batch)
        rows.append((gsc, acc, counts))
        print(
            f"{gsc:8.2f} | {acc['colour']:12.1%} | {acc['background']:10.1%} | {acc['shape']:10.1%} | "
            f"{acc['position']:8.1%} | {acc['size']:6.1%} | {dt:6.1f}",
            flush=True,
        )
        if args.grid:
            p = args.grid if len(guidances) == 1 else args.grid.with_name(f"{args.grid.stem}_g{gsc:g}.png")
            save_grid(imgs[:48], p)
    print(f"(counts: {rows[0][2]})")
    res = {}
    gsc = guidances[0]
    acc = rows[0][1]
    # the check the app's tests do
    from diffusers import DDIMScheduler  # noqa: F401

    g0 = torch.Generator("cpu").manual_seed(0)
    im = cast(
        "StableDiffusionPipelineOutput",
        pipe(
            "a red square on a white background",
            num_inference_steps=steps,
            guidance_scale=gsc,
            generator=g0,
            height=64,
            width=64,
        ),
    ).images[0]
    c = shapes.classify(im)
    print(f"'a red square on a white background' seed 0 -> {c}")
    if not args.no_inversion:
        m, vals = inversion_psnr(pipe, args.inv_n, args.inv_steps, args.seed)
        print(
            f"DDIM inversion ({args.inv_steps} steps, guidance 1) reconstruction PSNR vs VAE recon: "
            f"mean {m:.2f} dB (min {min(vals):.2f}, max {max(vals):.2f}, n={len(vals)})"
        )
        res["inversion_psnr_db"] = round(m, 2)
    if not args.no_timing:
        best, med = timing(pipe, gsc)
        print(
            f"20 steps at 64x64, guidance {gsc:g}, batch 1: {best:.3f} s (median {med:.3f} s), "
            f"{torch.get_num_threads()} threads"
        )
        res["seconds_20_steps_cpu"] = round(med, 3)
    if args.write_json:
        meta.update(
            {
                "name": meta.get("name", "Shapes (built-in)"),
                "steps": steps,
                "guidance": gsc,
                "scheduler": "ddim",
                "width": 64,
                "height": 64,
            }
        )
        ev = {
            "heldout_captions": len(specs),
            "steps": steps,
            "guidance": gsc,
            "shape_colour_acc": round(acc["colour"], 4),
            "background_colour_acc": round(acc["background"], 4),
            "shape_kind_acc": round(acc["shape"], 4),
            "position_acc": round(acc["position"], 4),
            "size_acc": round(acc["size"], 4),
            **res,
            "red_square_on_white_seed0": c,
        }
        meta["eval"] = ev
        meta_p.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {meta_p}")


if __name__ == "__main__":
    main()
