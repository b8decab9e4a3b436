"""Device and dtype choice at run time, and the memory options for small GPUs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from desktop_app.core.errors import UserError

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


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp16 on GPUs (bf16 if asked), fp32 on the CPU: fp16 matmuls on a CPU are about 14x slower."""
    if device.type == "cpu":
        return torch.bfloat16 if requested == "bf16" else torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if requested == "fp32":
        return torch.float32
    return torch.float16


@dataclass(frozen=True)
class MemoryOptions:
    """For GPUs with little memory: each trades speed for memory."""

    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False


def apply_memory_options(pipe, options: MemoryOptions, device: torch.device) -> None:
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    else:
        pipe.disable_attention_slicing()
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    if options.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


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
