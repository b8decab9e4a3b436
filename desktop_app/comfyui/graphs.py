"""Requests as ComfyUI API-format graphs of core nodes only (no custom node pack needed on the server).

A batch is one sampler chain per image, each with its own seed (seed, seed + 1, ...), so that every image of a
remote batch is reproduced by the seed the history records for it, as a local batch's are; ComfyUI's own batch
would draw all images from one seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from desktop_app.core.errors import InvalidRequest

OUTPUT_PREFIX = "diffusion-desk"


@dataclass(frozen=True)
class GraphJob:
    """Everything a graph needs, already resolved: names as the server spells them, sizes, seeds."""

    ckpt: str
    prompt: str
    negative: str
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    width: int
    height: int
    seeds: tuple[int, ...]
    denoise: float = 1.0
    clip_skip: int | None = None
    loras: tuple[tuple[str, float], ...] = ()
    image: str | None = None  # the uploaded source's name (img2img, inpaint)
    inpaint: bool = False  # the upload is RGBA, transparent where masked
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def sampler_names(sampler_id: str | None, schedule_id: str | None) -> tuple[str, str]:
    """ComfyUI's (sampler_name, scheduler) for the app's sampler and schedule ids (core.samplers keeps the table)."""
    from desktop_app.core.samplers import comfy_sampler

    return comfy_sampler(sampler_id or "euler", schedule_id)


def build_graph(job: GraphJob) -> tuple[dict[str, Any], list[str]]:
    """(the API-format graph, the ids of its output nodes in batch order)."""
    if not job.seeds:
        raise InvalidRequest("A job needs at least one image.", "Set the batch to 1 or more.")
    graph: dict[str, Any] = {}

    def node(class_type: str, **inputs: Any) -> list[Any]:
        node_id = str(len(graph) + 1)
        graph[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    ckpt = node("CheckpointLoaderSimple", ckpt_name=job.ckpt)
    model, clip, vae = ckpt, [ckpt[0], 1], [ckpt[0], 2]
    for name, weight in job.loras:
        lora = node("LoraLoader", lora_name=name, strength_model=weight, strength_clip=weight, model=model, clip=clip)
        model, clip = lora, [lora[0], 1]
    if job.clip_skip is not None and job.clip_skip > 1:
        clip = node("CLIPSetLastLayer", stop_at_clip_layer=-job.clip_skip, clip=clip)
    positive = node("CLIPTextEncode", text=job.prompt, clip=clip)
    negative = node("CLIPTextEncode", text=job.negative, clip=clip)
    if job.image is None:
        latent = node("EmptyLatentImage", width=job.width, height=job.height, batch_size=1)
    else:
        loaded = node("LoadImage", image=job.image)
        if job.inpaint and job.denoise >= 1.0:
            # the masked area starts from grey, as a full-strength inpaint should (works with 9-channel models too)
            latent = node("VAEEncodeForInpaint", pixels=loaded, vae=vae, mask=[loaded[0], 1], grow_mask_by=0)
        else:
            latent = node("VAEEncode", pixels=loaded, vae=vae)
            if job.inpaint:
                latent = node("SetLatentNoiseMask", samples=latent, mask=[loaded[0], 1])
    outputs = []
    for seed in job.seeds:
        sampled = node(
            "KSampler",
            seed=seed,
            steps=job.steps,
            cfg=job.cfg,
            sampler_name=job.sampler,
            scheduler=job.scheduler,
            denoise=job.denoise,
            model=model,
            positive=positive,
            negative=negative,
            latent_image=latent,
        )
        decoded = node("VAEDecode", samples=sampled, vae=vae)
        # PreviewImage: the result goes to the server's temp folder, not into its user's output gallery
        outputs.append(node("PreviewImage", images=decoded)[0])
    return graph, outputs


def samplers_in(graph: dict[str, Any]) -> list[str]:
    """The KSampler node ids in order: progress of the n-th is steps n*steps .. (n+1)*steps of the job."""
    return [node_id for node_id, n in graph.items() if n.get("class_type") == "KSampler"]


__all__ = ["OUTPUT_PREFIX", "GraphJob", "build_graph", "sampler_names", "samplers_in"]
