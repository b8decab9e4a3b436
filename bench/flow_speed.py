"""Engine it/s beside plain diffusers it/s on the FLUX.1 schnell and SD 3.5 medium architectures, random weights.

The component configs are the released models' (FLUX.1-schnell and stable-diffusion-3.5-medium `*/config.json`):
Flux 19 double + 38 single blocks at 3072 wide (24 heads of 128), T5-XXL (24 layers, 4096 wide) and CLIP-L; SD 3.5
medium an MMDiT-X of 24 layers at 1536 (24 heads of 64, dual attention in the first 13), CLIP-L + CLIP-G + T5-XXL;
both a 16-channel VAE. `--scale` keeps that share of every stack's depth and heads (head sizes as released), so a
CPU can run it: the default on a CPU is 1/8 at 256x256; on CUDA the real size at 1024x1024 in bf16.

Both runs share one set of modules in one process: the engine's `Engine.run` (prompt handling, step hooks with
progress, previews and the trajectory) against the pipeline's own `__call__`. Each model runs in a child process,
so its peak memory is its own: `torch.cuda.max_memory_allocated` on CUDA, the child's peak RSS
(`resource.getrusage`) on a CPU.
    python bench/flow_speed.py                 # both models, the device's defaults
    python bench/flow_speed.py --scale 0.25 --size 512 --steps 4 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, median

MODELS = ("flux-schnell", "sd3.5-medium")
PROMPT = "a red circle on a blue background, studio photo"
# The released configs (the parts that set the size; the rest are diffusers' defaults, as in those files).
FLUX_SCHNELL = {
    "transformer": {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": False,
        "axes_dims_rope": (16, 56, 56),
    },
    "scheduler": {"shift": 1.0, "use_dynamic_shifting": False},
    "vae": {"scaling_factor": 0.3611, "shift_factor": 0.1159},
    "settings": {"steps": 4, "guidance": 0.0},
}
SD35_MEDIUM = {
    "transformer": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 384,
        "dual_attention_layers": tuple(range(13)),
        "qk_norm": "rms_norm",
    },
    "scheduler": {"shift": 3.0},
    "vae": {"scaling_factor": 1.5305, "shift_factor": 0.0609},
    "settings": {"steps": 28, "guidance": 4.5},
}
T5_XXL = {"heads": 64, "d_kv": 64, "d_ff": 10240, "layers": 24, "vocab": 32128}
CLIP_L = {"heads": 12, "layers": 12, "act": "quick_gelu"}  # 768 wide
CLIP_G = {"heads": 20, "layers": 32, "act": "gelu"}  # 1280 wide


def _n(real: int, scale: float) -> int:
    return max(1, round(real * scale))


def _t5(scale: float):
    from transformers import T5Config, T5EncoderModel

    heads = _n(T5_XXL["heads"], scale)
    d_model = heads * T5_XXL["d_kv"]
    return T5EncoderModel(
        T5Config(
            vocab_size=T5_XXL["vocab"],
            d_model=d_model,
            d_kv=T5_XXL["d_kv"],
            d_ff=_n(T5_XXL["d_ff"], d_model / 4096),
            num_layers=_n(T5_XXL["layers"], scale),
            num_heads=heads,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _clip(spec: dict, scale: float, projection: bool, tokenizer) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden = _n(spec["heads"], scale) * 64
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=_n(spec["layers"], scale),
        num_attention_heads=_n(spec["heads"], scale),
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=spec["act"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(spec: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),  # pyright: ignore[reportArgumentType] - typed tuple[int]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        layers_per_block=2,
        latent_channels=16,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **spec,
    )


def transformer_config(model: str, scale: float) -> dict[str, Any]:
    """The released transformer config with `scale` of its depth and heads (and the text widths that follow)."""
    t5_width = _n(T5_XXL["heads"], scale) * T5_XXL["d_kv"]
    if model == "flux-schnell":
        config = dict(FLUX_SCHNELL["transformer"])
        config.update(
            num_layers=_n(19, scale),
            num_single_layers=_n(38, scale),
            num_attention_heads=_n(24, scale),
            joint_attention_dim=t5_width,
            pooled_projection_dim=_n(CLIP_L["heads"], scale) * 64,
        )
        return config
    config = dict(SD35_MEDIUM["transformer"])
    heads, layers = _n(24, scale), _n(24, scale)
    config.update(
        num_layers=layers,
        num_attention_heads=heads,
        caption_projection_dim=heads * 64,
        joint_attention_dim=t5_width,
        pooled_projection_dim=(_n(CLIP_L["heads"], scale) + _n(CLIP_G["heads"], scale)) * 64,
        dual_attention_layers=tuple(range(min(layers, _n(13, scale)))),
    )
    return config


def build(model: str, scale: float, folder: Path):
    """The pipeline with random weights (made on the current default device), its tokenizers saved in `folder`."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from tiny_flow import write_t5_tokenizer  # pyright: ignore[reportMissingImports] - tests/ is on sys.path
    from tiny_model import write_tokenizer  # pyright: ignore[reportMissingImports]
    from transformers import CLIPTokenizer, T5Tokenizer

    torch.manual_seed(0)
    write_tokenizer(folder / "tokenizer", 77)
    write_tokenizer(folder / "tokenizer_2", 77)
    write_t5_tokenizer(folder / "tokenizer_t5")
    clip_tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    t5_tok = T5Tokenizer.from_pretrained(str(folder / "tokenizer_t5"))
    spec = FLUX_SCHNELL if model == "flux-schnell" else SD35_MEDIUM
    scheduler = FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    if model == "flux-schnell":
        return FluxPipeline(
            scheduler=scheduler,
            vae=_vae(spec["vae"]),
            text_encoder=_clip(CLIP_L, scale, False, clip_tok),
            tokenizer=clip_tok,
            text_encoder_2=_t5(scale),
            tokenizer_2=t5_tok,
            transformer=FluxTransformer2DModel(**transformer_config(model, scale)),
        )
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**transformer_config(model, scale)),
        scheduler=scheduler,
        vae=_vae(spec["vae"]),
        text_encoder=_clip(CLIP_L, scale, True, clip_tok),  # pyright: ignore[reportArgumentType]
        tokenizer=clip_tok,
        text_encoder_2=_clip(CLIP_G, scale, True, clip_tok),  # pyright: ignore[reportArgumentType]
        tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")),
        text_encoder_3=_t5(scale),
        tokenizer_3=t5_tok,
    )


def parameter_counts(model: str, scale: float) -> dict[str, int]:
    """Each component's parameter count at `scale`, counted on the meta device (no memory, no init time)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp, torch.device("meta"):
        pipe = build(model, scale, Path(tmp))
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def measure(model: str, scale: float, size: int, step_counts: list[int], runs: int) -> list[dict[str, Any]]:
    """One model in this process: build on the device, let the engine adopt the very modules, time both paths at
    each step count."""
    from unittest import mock

    import torch

    from desktop_app.engine import models as engine_models
    from desktop_app.engine.engine import Engine

    cuda = torch.cuda.is_available()
    engine = Engine(dtype="bf16" if cuda else None)
    folder = Path(tempfile.mkdtemp()) / model
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with torch.device(engine.device):
        pipe = build(model, scale, folder)
    pipe.to(engine.dtype)
    pipe.set_progress_bar_config(disable=True)
    built = time.perf_counter() - started
    pipe.save_config(str(folder))  # model_index.json: the engine's source is this folder, its modules in memory
    guidance = 0.0 if model == "flux-schnell" else 4.5
    (folder / "diffusion_desk.json").write_text(
        json.dumps({"steps": step_counts[0], "guidance": guidance, "width": size, "height": size}), encoding="utf-8"
    )
    with mock.patch.object(engine_models, "load_pipeline", return_value=pipe):
        engine.models.get(str(folder))
    params = sum(parameter_counts(model, scale).values())
    return [
        _time_both(engine, pipe, str(folder), model, size, steps, guidance, runs) | {"build_s": built, "params": params}
        for steps in step_counts
    ]


def _time_both(engine, pipe, folder: str, model: str, size: int, steps: int, guidance: float, runs: int) -> dict:
    """Median whole-call time of Engine.run and of the pipeline's own call on the same modules."""
    import resource

    import torch

    from desktop_app.core.events import Progress
    from desktop_app.core.requests import GenerateRequest

    cuda = engine.device.type == "cuda"
    request = GenerateRequest(prompt=PROMPT, model=folder, steps=steps, guidance=guidance, seed=1)
    loop_rates: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, Progress) and event.step == event.total:
            loop_rates.append(event.its_per_sec)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def run_engine():
        return engine.run(request, on_event)

    def run_plain():
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )

    timed(run_engine)  # warm-up
    timed(run_plain)
    peaks: dict[str, float] = {"engine": 0.0, "plain": 0.0}
    times: dict[str, list[float]] = {"engine": [], "plain": []}
    for _ in range(runs):  # alternating, so a busy machine slows both alike
        for which, fn in (("engine", run_engine), ("plain", run_plain)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times[which].append(timed(fn))
            if cuda:
                peaks[which] = max(peaks[which], torch.cuda.max_memory_allocated() / 2**30)
    if not cuda:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
        peaks = {"engine": peak, "plain": peak}
    e, p = median(times["engine"]), median(times["plain"])
    return {
        "model": model,
        "device": f"{engine.device.type} {str(engine.dtype).removeprefix('torch.')}",
        "size": size,
        "steps": steps,
        "engine_its": steps / e,
        "plain_its": steps / p,
        "engine_loop_its": median(loop_rates[1:]) if len(loop_rates) > 1 else float("nan"),
        "ratio": e / p,
        "peak_engine_gib": peaks["engine"],
        "peak_plain_gib": peaks["plain"],
    }


def _human(count: float) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description="Engine vs diffusers it/s on FLUX.1 schnell and SD 3.5 medium")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--scale", type=float, default=1.0 if cuda else 0.0625, help="share of depth and heads")
    parser.add_argument("--size", type=int, default=1024 if cuda else 256)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 28] if cuda else [4])
    parser.add_argument("--runs", type=int, default=3 if cuda else 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one model's measurements, printed as JSON for the parent
        print("RESULT " + json.dumps(measure(args.child, args.scale, args.size, args.steps, args.runs)))
        return
    print(
        "| model | scale | params (bench / released) | size | steps | device | engine it/s | diffusers it/s "
        "| engine loop it/s | engine/diffusers time | peak GiB engine / diffusers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        released = sum(parameter_counts(model, 1.0).values())
        command = [sys.executable, __file__, "--child", model, "--scale", str(args.scale), "--size", str(args.size)]
        command += ["--runs", str(args.runs), "--steps", *map(str, args.steps)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT))
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"| {model} | {args.scale:g} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1]} |")
            continue
        for r in json.loads(lines[-1].removeprefix("RESULT ")):
            steps = r["steps"]
            print(
                f"| {model} | {args.scale:g} | {_human(r['params'])} / {_human(released)} | {r['size']} | {steps} "
                f"| {r['device']} | {r['engine_its']:.2f} | {r['plain_its']:.2f} | {r['engine_loop_its']:.2f} "
                f"| {r['ratio']:.3f} | {r['peak_engine_gib']:.1f} / {r['peak_plain_gib']:.1f} |"
            )
    print(
        "\nit/s: steps / whole call (text encoders, denoising, VAE decode); engine loop it/s: the engine's own "
        "Progress rate over the denoising steps. CPU peaks are the process's peak RSS (weights included)."
    )


if __name__ == "__main__":
    main()
