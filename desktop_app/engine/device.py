"""Device and dtype choice at run time, and the memory options for small GPUs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from desktop_app.core.errors import UserError
from desktop_app.core.modelinfo import is_flow

log = logging.getLogger(__name__)

DEVICES = ("cuda", "mps", "cpu")


def pick_device(requested: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless the user asked for one."""
    if requested:
        name = requested.split(":")[0]
        if name not in DEVICES:
            raise UserError(f"Unknown device {requested!r}.", "Use cpu, cuda or mps.")
        if name == "cuda" and not torch.cuda.is_available():
            raise UserError(
                "CUDA was asked for but no CUDA GPU is available.",
                "Use --device cpu, or install the CUDA build of torch.",
            )
        if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("MPS was asked for but is not available.", "Use --device cpu.")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = ("bf16", "fp16", "fp32")


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device.type == "mps"


def pick_dtype(device: torch.device, requested: str | None = None, *, family: str | None = None) -> torch.dtype:
    """The weights' precision: "bf16" | "fp16" | "fp32" as asked, else (None) the device's and family's best.

    CPU: fp32 (fp16 matmuls on a CPU are about 14x slower; bf16 only if asked). GPUs: fp16 for SD 1.x / 2.x / XL;
    bf16 for the flow families (SD 3.x, Flux) where the GPU has it: they were trained in bf16 and their T5 text
    encoder overflows fp16's range (black or noisy images), so fp16 is their fallback on older GPUs only."""
    if requested is not None and requested not in DTYPES:
        raise UserError(f"Unknown precision {requested!r}.", "Use bf16, fp16 or fp32 (or leave it on auto).")
    if device.type == "cpu":
        return torch.bfloat16 if requested == "bf16" else torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if requested == "fp32":
        return torch.float32
    if requested is None and is_flow(family) and _bf16_supported(device):
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class MemoryOptions:
    """For GPUs with little memory: each trades speed for memory.

    `cpu_offload` keeps only the running model (text encoder, transformer / UNet, VAE) on the GPU;
    `sequential_offload` moves each layer there as it runs: the least memory (a 12B Flux transformer runs in a few
    GB) and the slowest. Both need CUDA; elsewhere they do nothing and the log says why."""

    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    sequential_offload: bool = False


def apply_memory_options(pipe, options: MemoryOptions, device: torch.device) -> None:
    """Set the options on a loaded pipeline (any family) and put it on the device."""
    if options.attention_slicing and hasattr(pipe, "unet"):
        pipe.enable_attention_slicing()
    elif options.attention_slicing:  # transformers (SD 3, Flux) attend through SDPA: slicing does not apply
        log.info("attention slicing: not used by %s (its attention is memory-efficient already)", type(pipe).__name__)
    elif hasattr(pipe, "unet"):
        pipe.disable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):  # the 16-channel flow VAEs tile the same way
        if options.vae_tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()
    offload = "sequential" if options.sequential_offload else "model" if options.cpu_offload else ""
    if offload and device.type != "cuda":
        log.info("%s CPU offload: needs a CUDA GPU, not %s; the model stays on %s", offload, device.type, device)
        offload = ""
    if offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def flow_memory_hint(memory: MemoryOptions, *, width: int, height: int, batch: int = 1, quantized: bool = False) -> str:
    """The one change that would help an SD 3.x / Flux job that ran out of memory, cheapest in speed first.

    The transformer is what does not fit (Flux: 12B parameters, 24 GB in bf16), so attention slicing is never
    the answer; engine.memory_hint calls this for flow families."""
    if batch > 1:
        return "Make fewer images per job (batch 1)."
    if width * height > 1024 * 1024 and not memory.vae_tiling:
        return "Turn on VAE tiling: large images then decode in tiles."
    if not memory.cpu_offload and not memory.sequential_offload:
        return "Turn on model CPU offload: the text encoders and the VAE then wait in main memory while the transformer runs."
    if not memory.sequential_offload:
        return "Turn on sequential CPU offload: layer by layer on the GPU, slow, but the transformer then needs only a few GB."
    if not quantized:
        return "Use a GGUF (Q8_0 / Q4_K) or FP8 file of the transformer: half the memory or less."
    if width * height > 768 * 768:
        return "Make a smaller image (768x768 or less): every memory option is already on."
    return "This model does not fit this GPU even with every memory option on: use a smaller model (SD 3.5 Medium, FLUX.1 schnell GGUF Q4)."


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


@contextmanager
def vae_precision(vae) -> Iterator[torch.dtype]:
    """The SDXL VAE overflows in fp16 (its config says force_upcast): run it in fp32 inside this block, as the
    SDXL pipelines do, and back to fp16 after. Yields the dtype the VAE runs in."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            vae.to(torch.float16)
