"""Editing by DDIM inversion, measured on the built-in shapes model (an evaluation, not a test).

`--table` (the README's table): every colour edit runs through `Engine.run(EditRequest(...))`, one held-out
picture at a time, for each method (ddim, negative-prompt, direct; each with attention control off, with
Prompt-to-Prompt, with Prompt-to-Prompt and local blend; LEDITS++ when engine/ledits.py exists) x depth (the
model's default, full = strength 1) x guidance (the model's edit default, 7.5), and prints one Markdown table:
colour-edit success (tools/shapes.classify), background PSNR / MSE / SSIM outside the dilated shape, structure IoU
(the shape's mask before and after) and the cost per edit as a multiple of a generation (same process, same
steps and guidance, median). Then: the masked edit (identical outside the mask?), the suggested masks' IoU with
the true shape (DiffEdit's and the cross-attention one) and the SDXL-architecture cost with random weights.
`--table --quick` runs in under 3 minutes.

Held-out shapes pictures (captions never seen in training, jittered renders) go through
the edit's own functions (`inversion.invert` once per t0, `inversion.denoise` per method,
batched over the images; `Engine.run` for the timing), and the script prints:

1. Reconstruction (target prompt = source prompt): PSNR against the VAE reconstruction
   (encode -> decode, the best any latent edit can do), per method and guidance, 50 steps.
   Targets: >= 30 dB at guidance 1; >= 27 dB at guidance 7.5 with the default method.
2. Edit success for colour edits ("a red circle ..." -> "a blue circle ..."): share of
   results whose shape colour (tools/shapes.classify) is the asked one, and the
   background PSNR against the source (pixels 3 px or more away from the shape).
   Unmasked: >= 80% and >= 25 dB. Masked (a rough box around the shape, as a user would
   paint it): >= 80% and identical outside the mask. Also the suggested mask's overlap.
3. Cost: a full edit (inversion + denoising, default method and t0) over a plain
   generation with the same steps and guidance, median of a few runs. Target <= 2.2x.

    python bench/inversion_eval.py [--model PATH] [--n 16] [--steps 50] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from desktop_app.core.modelinfo import builtin_model_path  # noqa: E402
from desktop_app.core.requests import EditRequest, GenerateRequest  # noqa: E402
from desktop_app.engine import inversion  # noqa: E402
from desktop_app.engine.encoding import decode_images, embed_prompt  # noqa: E402
from desktop_app.engine.engine import Engine, encode  # noqa: E402
from tools import shapes  # noqa: E402

METHODS = ("ddim", "negative-prompt", "direct")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def shape_mask(image: Image.Image, spec: dict) -> np.ndarray:
    """Pixels of the source that are not plain background (the shape and its anti-aliased edge)."""
    pixels = arr(image).astype(np.float32)
    background = np.array(shapes.PALETTE[spec["background"]], dtype=np.float32)
    return np.abs(pixels - background).max(-1) > 24


def new_colour(spec: dict) -> str:
    """A deterministic colour other than the shape's and the background's ("red" -> "blue" style)."""
    order = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
    start = order.index(spec["colour"])
    for k in range(1, len(order)):
        colour = order[(start + 3 * k) % len(order)]
        if colour not in (spec["colour"], spec["background"]):
            return colour
    raise AssertionError


def held_out(n: int, seed: int = 0) -> list[tuple[dict, Image.Image]]:
    rng = random.Random(seed)
    return [(spec, shapes.render(spec, 64, rng)) for spec in shapes.heldout_specs()[:n]]


class Batch:
    """Held-out images inverted once (per t0) as one batch: every method and target reuses the levels."""

    def __init__(self, engine: Engine, model: str, items, steps: int, t0: int, refine: int) -> None:
        self.loaded = loaded = engine.models.get(model)
        self.items, self.steps = items, steps
        scheduler = inversion._ddim(loaded, steps)
        self.timesteps = inversion.edit_timesteps(scheduler, t0)
        with torch.inference_mode():
            self.z0 = torch.cat([encode(loaded, image, (64, 64)).float() for _, image in items])  # (B, C, h, w)
            self.refs = [arr(im) for im in decode_images(loaded, self.z0)]  # the VAE reconstructions
            self.cond_src = torch.cat([embed_prompt(loaded, shapes.caption(spec)) for spec, _ in items])  # (B, L, D)
            self.uncond = embed_prompt(loaded, "").expand_as(self.cond_src)
        started = time.perf_counter()
        self.levels = inversion.invert(loaded, self.z0, self.cond_src, self.timesteps, steps, refine=refine)
        self.invert_seconds = time.perf_counter() - started

    def embed(self, texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([embed_prompt(self.loaded, text) for text in texts])

    def run(self, method: str, guidance: float, cond_tgt=None, latent_mask=None) -> list[Image.Image]:
        x = inversion.denoise(
            self.loaded,
            self.levels,
            self.timesteps,
            self.steps,
            method,
            guidance,
            self.cond_src,
            self.cond_src if cond_tgt is None else cond_tgt,
            self.uncond,
            latent_mask=latent_mask,
        )
        return decode_images(self.loaded, x)


def reconstruction(batch: Batch, guidances, methods) -> dict:
    table = {}
    for guidance in guidances:
        for method in methods:
            outs = batch.run(method, guidance)
            scores = [psnr(arr(out), ref) for out, ref in zip(outs, batch.refs)]
            finite = [s if math.isfinite(s) else 99.0 for s in scores]
            table[(guidance, method)] = (statistics.mean(finite), min(finite))
            print(
                f"  guidance {guidance:>4}  {method:<16} mean {statistics.mean(finite):6.2f} dB   worst {min(finite):6.2f} dB",
                flush=True,
            )
    return table


def edits(batch: Batch, guidance: float, method: str, masked: bool, suggest: bool = False) -> dict:
    loaded, items = batch.loaded, batch.items
    colours = [new_colour(spec) for spec, _ in items]
    targets = [shapes.caption(dict(spec, colour=colour)) for (spec, _), colour in zip(items, colours)]
    shape_masks = [shape_mask(image, spec) for spec, image in items]
    masks, feathered, ious = [], [], []
    for (spec, image), shape, target in zip(items, shape_masks, targets):
        if masked:  # a rough box around the shape, as a user would paint it
            box = np.zeros_like(shape)
            ys, xs = np.nonzero(shape)
            box[max(ys.min() - 4, 0) : ys.max() + 5, max(xs.min() - 4, 0) : xs.max() + 5] = True
            masks.append(Image.fromarray((box * 255).astype(np.uint8), "L"))
            feathered.append(inversion.feather_mask(masks[-1], 4))
        if suggest:
            suggested = np.asarray(inversion.suggest_mask(loaded, image, shapes.caption(spec), target)) > 0
            truth = dilate(shape, 2)
            ious.append((suggested & truth).sum() / max((suggested | truth).sum(), 1))
    latent_mask = None
    if masked:
        latent_mask = torch.cat(
            [inversion._latent_mask(f, 64, 64, loaded.latent_factor, loaded.device) for f in feathered]
        )
    outs = batch.run(method, guidance, batch.embed(targets), latent_mask)
    ok, bg_psnr, identical = 0, [], 0
    for i, ((_spec, image), out) in enumerate(zip(items, outs)):
        if masked:
            out = loaded.pipe.image_processor.apply_overlay(feathered[i], image, out)
        ok += shapes.classify(out)["colour"] == colours[i]
        background = ~dilate(shape_masks[i], 3)
        bg_psnr.append(psnr(arr(out)[background], arr(image)[background]))
        if masked:
            outside = np.asarray(masks[i]) == 0
            identical += bool(np.array_equal(arr(out)[outside], arr(image)[outside]))
    finite = [p if math.isfinite(p) else 99.0 for p in bg_psnr]
    return {
        "success": ok / len(items),
        "bg_psnr": statistics.mean(finite),
        "bg_worst": min(finite),
        "identical": identical / len(items) if masked else None,
        "iou": statistics.mean(ious) if ious else None,
    }


def cost(engine, model, steps, guidance, t0, method, reps) -> tuple[float, float, float]:
    spec = shapes.heldout_specs()[0]
    image = shapes.render(spec, 64, random.Random(0))
    target = shapes.caption(dict(spec, colour=new_colour(spec)))
    generate = GenerateRequest(prompt=target, model=model, steps=steps, guidance=guidance, scheduler="ddim", seed=0)
    edit = EditRequest(
        prompt=target,
        source_prompt=shapes.caption(spec),
        model=model,
        image=image,
        steps=steps,
        guidance=guidance,
        t0=t0,
        method=method,
        seed=0,
    )
    # warm up
    engine.run(generate)
    engine.run(edit)
    gen_times, edit_times = [], []
    for _ in range(reps):
        for request, times in ((generate, gen_times), (edit, edit_times)):
            started = time.perf_counter()
            engine.run(request)
            times.append(time.perf_counter() - started)
    g, e = statistics.median(gen_times), statistics.median(edit_times)
    return g, e, e / g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(builtin_model_path()))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=16, help="held-out images")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--t0",
        type=int,
        default=None,
        help="reconstruction and edit start timestep (default: the engine's for this model)",
    )
    ap.add_argument(
        "--recon-t0", type=int, nargs="*", default=None, help="t0 values for the reconstruction table (default: --t0)"
    )
    ap.add_argument("--recon-methods", nargs="*", default=list(METHODS))
    ap.add_argument("--no-suggest", action="store_true", help="skip the suggested-mask overlap")
    ap.add_argument("--cost-methods", nargs="*", default=["ddim", inversion.DEFAULT_METHOD])
    ap.add_argument("--edit-t0", type=int, nargs="*", default=None, help="t0 values for the edit table (default: --t0)")
    ap.add_argument("--edit-guidance", type=float, nargs="*", default=[7.5])
    ap.add_argument("--edit-methods", nargs="*", default=[inversion.DEFAULT_METHOD])
    ap.add_argument("--refine", type=int, default=None, help="fixed-point refinements per inversion step")
    ap.add_argument("--cost-reps", type=int, default=3)
    ap.add_argument(
        "--cost-t0", type=int, nargs="*", default=None, help="t0 values for the cost (default: --t0 and 999)"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["recon", "edit", "masked", "cost"])
    ap.add_argument("--quick", action="store_true", help="4 images, 20 steps: a plumbing check")
    ap.add_argument("--table", action="store_true", help="the one Markdown table (see the module's docstring)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.table:
        return table_main(args)
    if args.quick:
        args.n, args.steps, args.cost_reps = 4, 20, 1
    if args.refine is not None:
        inversion.INVERSION_REFINE = args.refine
    if not (Path(args.model) / "model_index.json").is_file():
        print(f"No model at {args.model}: train the built-in model first (tools/train_builtin.py).")
        return 1
    engine = Engine(device=args.device)
    model = args.model
    if args.t0 is None:
        args.t0 = inversion.default_t0(engine.models.get(model).pipe.scheduler.alphas_cumprod)
    items = held_out(args.n)
    print(
        f"model {model}  device {engine.device}  held-out images {len(items)}  steps {args.steps}  "
        f"default method {inversion.DEFAULT_METHOD}  refine {inversion.INVERSION_REFINE}"
    )
    started = time.perf_counter()

    refine = inversion.INVERSION_REFINE
    batches: dict[int, Batch] = {}

    def batch_for(t0: int) -> Batch:
        if t0 not in batches:
            batches.clear()
            batches[t0] = Batch(engine, model, items, args.steps, t0, refine)
        return batches[t0]

    if "recon" not in args.skip:
        for t0 in args.recon_t0 if args.recon_t0 is not None else [args.t0]:
            batch = batch_for(t0)
            print(
                f"\n1. Reconstruction PSNR vs the VAE reconstruction (target = source), t0 {batch.timesteps[0]} "
                f"({len(batch.timesteps)} of {args.steps} steps; inversion {batch.invert_seconds:.0f} s):",
                flush=True,
            )
            reconstruction(batch, (1.0, 7.5), args.recon_methods)

    if "edit" not in args.skip:
        print("\n2. Colour edits (success >= 80%; background >= 25 dB unmasked, identical masked):")
        print(
            f"  {'method':<16}{'t0':>5}{'cfg':>6}  {'mask':<6}{'success':>8}{'bg PSNR':>9}{'worst':>8}{'identical':>10}{'sugg. IoU':>10}"
        )
        for t0 in args.edit_t0 if args.edit_t0 is not None else [args.t0]:
            batch = batch_for(t0)
            for method in args.edit_methods:
                for guidance in args.edit_guidance:
                    for masked in (False, True) if "masked" not in args.skip else (False,):
                        r = edits(batch, guidance, method, masked, suggest=masked and not args.no_suggest)
                        ident = f"{r['identical']:.0%}" if r["identical"] is not None else "-"
                        iou = f"{r['iou']:.2f}" if r["iou"] is not None else "-"
                        print(
                            f"  {method:<16}{batch.timesteps[0]:>5}{guidance:>6}  {'box' if masked else 'none':<6}{r['success']:>8.0%}"
                            f"{r['bg_psnr']:>9.2f}{r['bg_worst']:>8.2f}{ident:>10}{iou:>10}",
                            flush=True,
                        )
                        args.no_suggest = args.no_suggest or masked  # it depends on neither method nor guidance

    if "cost" not in args.skip:
        print("\n3. Cost of an edit over a generation with the same steps (median):")
        for t0 in args.cost_t0 if args.cost_t0 is not None else sorted({args.t0, 999}):
            for method in args.cost_methods:
                g, e, ratio = cost(engine, model, args.steps, args.edit_guidance[0], t0, method, args.cost_reps)
                print(
                    f"  {method:<16} t0 {t0:>3}: generation {g * 1000:7.0f} ms, edit {e * 1000:7.0f} ms, ratio {ratio:.2f}x",
                    flush=True,
                )
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


# ------------------------------------------------------------------ the table ---
ATTENTION = {"off": {"attention_control": "off"}, "p2p": {"attention_control": "p2p", "local_blend": False}}
ATTENTION["p2p+blend"] = {"attention_control": "p2p", "local_blend": True}


def ssim(a: np.ndarray, b: np.ndarray, where: np.ndarray, radius: int = 3) -> float:
    """Mean SSIM (grey levels, (2r+1)^2 box windows, the usual constants) over the pixels `where`."""
    x = a.astype(np.float64).mean(-1)
    y = b.astype(np.float64).mean(-1)

    def box(z: np.ndarray) -> np.ndarray:
        padded = np.pad(z, radius, mode="reflect")
        k = 2 * radius + 1
        c = np.cumsum(np.cumsum(np.pad(padded, ((1, 0), (1, 0))), 0), 1)
        return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)

    mx, my = box(x), box(y)
    vx, vy, cxy = box(x * x) - mx**2, box(y * y) - my**2, box(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[where].mean())


def out_shape_mask(image: Image.Image, spec: dict) -> np.ndarray:
    """Pixels of a result that are not the source's background colour: the shape after the edit."""
    return shape_mask(image, spec)


def _ledits():
    try:
        from desktop_app.engine import ledits
    except ImportError:
        return None
    return getattr(ledits, "run_ledits", None)


def row_cost(engine, edit: EditRequest, reps: int) -> float:
    """An edit's seconds over a generation's (same model, steps, guidance, DDIM), timed in alternation so that a
    shared machine's load weighs on both alike: the median of the per-pair ratios."""
    generate = GenerateRequest(
        prompt=edit.prompt, model=edit.model, steps=edit.steps, guidance=edit.guidance, scheduler="ddim", seed=0
    )
    ratios = []
    for _ in range(reps):
        started = time.perf_counter()
        engine.run(generate)
        middle = time.perf_counter()
        engine.run(edit)
        ratios.append((time.perf_counter() - middle) / (middle - started))
    return statistics.median(ratios)


def table_rows(engine, model, items, steps, depths, guidances, methods, attentions, reps: int = 3):
    """Run every configuration through Engine.run; returns the rows (dicts) for `print_table`."""
    rows = []

    for method in methods:
        for attention in attentions if method != "ledits" else ["-"]:
            for depth_name, depth in depths:
                for guidance in guidances:
                    ok, psnrs, mses, ssims, ious, costs = 0, [], [], [], [], []
                    for spec, image in items:
                        colour = new_colour(spec)
                        target = shapes.caption(dict(spec, colour=colour))
                        fields = dict(depth)
                        if method == "ledits":
                            from desktop_app.core.requests import EditConcept

                            fields["edit_concepts"] = (
                                EditConcept(prompt=f"{colour} {spec['shape']}"),
                                EditConcept(prompt=f"{spec['colour']} {spec['shape']}", remove=True),
                            )
                        else:
                            fields.update(ATTENTION[attention])
                        request = EditRequest(
                            prompt=target,
                            source_prompt=shapes.caption(spec),
                            model=model,
                            image=image,
                            steps=steps,
                            guidance=guidance,
                            method=method,
                            seed=0,
                            **fields,
                        )
                        out = engine.run(request).images[0]
                        if not costs:
                            costs.append(row_cost(engine, request, reps))
                        ok += shapes.classify(out)["colour"] == colour
                        before = shape_mask(image, spec)
                        background = ~dilate(before, 3)
                        a, b = arr(out)[background], arr(image)[background]
                        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
                        mses.append(mse)
                        psnrs.append(min(psnr(a, b), 99.0))
                        ssims.append(ssim(arr(out), arr(image), background))
                        after = out_shape_mask(out, spec)
                        ious.append((before & after).sum() / max((before | after).sum(), 1))
                    rows.append(
                        {
                            "method": method,
                            "attention": attention,
                            "depth": depth_name,
                            "guidance": guidance,
                            "success": ok / len(items),
                            "psnr": statistics.mean(psnrs),
                            "mse": statistics.mean(mses),
                            "ssim": statistics.mean(ssims),
                            "iou": statistics.mean(ious),
                            "cost": costs[0],
                        }
                    )
                    print_row(rows[-1])
    return rows


HEADER = "| method | attention | depth | guidance | success | bg PSNR (dB) | bg MSE | bg SSIM | structure IoU | cost (x gen) |"


def print_row(r: dict) -> None:
    print(
        f"| {r['method']} | {r['attention']} | {r['depth']} | {r['guidance']:g} | {r['success']:.0%} | "
        f"{r['psnr']:.2f} | {r['mse']:.1f} | {r['ssim']:.3f} | {r['iou']:.2f} | {r['cost']:.2f} |",
        flush=True,
    )


def masked_check(engine, model, items, steps, request_fields) -> float:
    """Share of masked edits (a rough box around the shape) identical to the source outside the mask."""
    identical = 0
    for spec, image in items:
        shape = shape_mask(image, spec)
        box = np.zeros_like(shape)
        ys, xs = np.nonzero(shape)
        box[max(ys.min() - 4, 0) : ys.max() + 5, max(xs.min() - 4, 0) : xs.max() + 5] = True
        mask = Image.fromarray((box * 255).astype(np.uint8), "L")
        request = EditRequest(
            prompt=shapes.caption(dict(spec, colour=new_colour(spec))),
            source_prompt=shapes.caption(spec),
            model=model,
            image=image,
            mask=mask,
            steps=steps,
            seed=0,
            **request_fields,
        )
        out = engine.run(request).images[0]
        identical += bool(np.array_equal(arr(out)[~box], arr(image)[~box]))
    return identical / len(items)


def mask_ious(engine, model, items) -> dict[str, float]:
    loaded = engine.models.get(model)
    scores: dict[str, list[float]] = {"diffedit": [], "attention": []}
    for spec, image in items:
        target = shapes.caption(dict(spec, colour=new_colour(spec)))
        truth = dilate(shape_mask(image, spec), 2)
        for how in scores:
            suggested = np.asarray(inversion.suggest_mask(loaded, image, shapes.caption(spec), target, how=how)) > 0
            scores[how].append((suggested & truth).sum() / max((suggested | truth).sum(), 1))
    return {how: statistics.mean(v) for how, v in scores.items()}


def sdxl_cost(engine, steps: int, size: int, methods) -> list[tuple[str, float, float, float]]:
    """Edit / generation seconds on a tiny random-weight SDXL (two text encoders, text_time conditioning)."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    build_tiny_sdxl = importlib.import_module("test_models_tiny").build_tiny_sdxl  # the tests' offline builder

    folder = build_tiny_sdxl(Path(tempfile.mkdtemp()) / "tiny-sdxl")
    image = Image.new("RGB", (size, size), (200, 40, 40))
    out = []
    for label, fields in methods:
        generate = GenerateRequest(
            prompt="a blue circle", model=str(folder), steps=steps, guidance=7.5, width=size, height=size, seed=0
        )
        generate = generate.replace(scheduler="ddim")
        edit = EditRequest(
            prompt="a blue circle",
            source_prompt="a red circle",
            model=str(folder),
            image=image,
            steps=steps,
            guidance=7.5,
            strength=1.0,
            width=size,
            height=size,
            seed=0,
            **fields,
        )
        engine.run(generate)  # warm
        engine.run(edit)
        g, e = [], []
        for _ in range(3):
            for request, times in ((generate, g), (edit, e)):
                started = time.perf_counter()
                engine.run(request)
                times.append(time.perf_counter() - started)
        out.append((label, statistics.median(g), statistics.median(e), statistics.median(e) / statistics.median(g)))
    return out


def table_main(args) -> int:
    if not (Path(args.model) / "model_index.json").is_file():
        print(f"No model at {args.model}: train the built-in model first (tools/train_builtin.py).")
        return 1
    from desktop_app.core.modelinfo import model_defaults

    engine = Engine(device=args.device)
    model = args.model
    edit_defaults = dict(model_defaults(model).get("edit") or {})
    default_guidance = float(edit_defaults.get("guidance", model_defaults(model).get("guidance", 7.5)))
    n, steps = (2, 10) if args.quick else (args.n, args.steps)
    items = held_out(n)
    depths = [("default", {}), ("full", {"strength": 1.0})]
    guidances = sorted({default_guidance, 7.5}) if not args.quick else [7.5]
    methods: list[str] = list(METHODS)
    attentions = list(ATTENTION) if not args.quick else ["off", "p2p+blend"]
    warm = EditRequest(
        prompt="a blue circle", source_prompt="a red circle", model=model, image=items[0][1], steps=steps
    )
    for control in ("off", "p2p"):  # the first run of each path is slower
        engine.run(warm.replace(attention_control=control))
    if _ledits() is not None:
        methods.append("ledits")
    else:
        print("(no desktop_app/engine/ledits.py yet: LEDITS++ rows left out)")
    started = time.perf_counter()
    print(f"\nBuilt-in model, {len(items)} held-out colour edits, {steps} steps; model edit defaults {edit_defaults}\n")
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    table_rows(engine, model, items, steps, depths, guidances, methods, attentions, 1 if args.quick else args.cost_reps)
    fields = {
        k: edit_defaults[k] for k in ("method", "attention_control", "local_blend", "guidance") if k in edit_defaults
    }
    print(
        f"\nMasked edits at the model's edit defaults, identical outside the mask: "
        f"{masked_check(engine, model, items, steps, fields):.0%}"
    )
    ious = mask_ious(engine, model, items)
    print(f"Suggested mask IoU with the true shape: DiffEdit {ious['diffedit']:.2f}, attention {ious['attention']:.2f}")
    size = 64 if args.quick else 128
    print(f"\nSDXL architecture, random weights, {size}x{size}, {steps} steps, full depth, guidance 7.5 (CPU):")
    for label, g, e, ratio in sdxl_cost(
        engine,
        steps,
        size,
        [
            ("direct", {"method": "direct", "attention_control": "off"}),
            ("direct + P2P", {"method": "direct", "attention_control": "p2p", "local_blend": True}),
        ],
    ):
        print(f"  {label:<14} generation {g * 1000:6.0f} ms, edit {e * 1000:6.0f} ms, ratio {ratio:.2f}x")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
