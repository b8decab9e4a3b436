"""Regional prompts in cross-attention: inside each painted region the image attends to that region's prompt.

How it works (the attention-mask mode of A1111's Regional Prompter, with diffusers' attention-processor interface
as the community `regional_prompting_stable_diffusion.py` uses it): for the run, every cross-attention layer (attn2)
of the UNet gets a `RegionalAttnProcessor`. The pipeline still encodes the base prompt (and the negative one) as
always; the processor appends the region prompts' tokens after the base prompt's on the token axis and gives every
query position an additive attention bias over those tokens, so one `scaled_dot_product_attention` call per layer
does it all (AttnProcessor2_0 semantics, one extra key block per region).

Rules (documented for the user in the same words):
- Membership: a region's mask is averaged down to each layer's grid, so a soft (feathered) edge is a partial
  membership m in [0, 1]. A region's share there is a = min(1, weight * m).
- Shares: a query attends to region i's tokens with bias log(a_i) and to the base prompt's with log(1 - sum a_i)
  (never below 0). Outside every region that is the base prompt alone; fully inside one region at weight >= 1 it is
  that region's prompt alone (the base is masked out), so a region over the whole picture is the same run as its
  prompt as the base prompt. A weight below 1 mixes the base prompt back in (0.5: about half the attention mass
  each); above 1 the region reaches full strength further into its soft edge.
- Overlaps: where regions overlap, their shares add up; past 1 the base prompt drops out and the regions split the
  attention in the ratio of their shares (so a heavier region wins its overlap).
- The biases set each group's attention mass only approximately (softmax weighs a group by its own scores too);
  the start token, which takes most of the mass in CLIP, is the same for every prompt, which keeps it close.
- Classifier-free guidance: the unconditional (negative prompt) rows go through the layer's own processor,
  untouched and everywhere: the negative prompt applies to the whole picture.
- Global conditioning (SDXL's pooled text embeds and time ids, the built-in model's pooled text embedding) comes
  from the base prompt.

The latent mode (`regional_latents`, A1111 Regional Prompter's "Latent" mode, MultiDiffusion's region-based
generation, Bar-Tal et al. 2023) runs the UNet once more per region and step, on the latent crop of the region's
bounding box (rounded out to multiples of 8 latent pixels, at least the model's native latent size where the
canvas allows) with the region's whole conditioning: its prompt's states, its own pooled embedding (SDXL's
text_embeds; the built-in model pools its encoder states inside the UNet) and, for SDXL, time ids with the crop's
offset as crops_coords_top_left and its size as the target. The predictions are blended per latent pixel:
eps = sum_i a_i * eps_i + (1 - sum a_i) * eps_base, a_i the shares above, divided by their sum where it passes 1.
Both CFG branches are blended this way (unconditional rows: the negative prompt on the crop): each crop makes its own
guided picture; the whole-canvas base call is skipped where the regions cover everything. This binds colour and
kind in each region where the attention mode cannot (global conditioning is per region here); it costs one UNet
call per crop size and step for the regions (regions of one size are batched), plus the base where needed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from desktop_app.core.errors import InvalidRequest
from desktop_app.core.requests import EditRequest, GenerateRequest, InpaintRequest, RegionPrompt
from desktop_app.engine.attention import project_heads
from desktop_app.engine.encoding import text_conditioning
from desktop_app.engine.models import LoadedModel

MAX_REGIONS = 8


def check_regions(request: GenerateRequest) -> None:
    """Refuse what cannot run at all, before the model loads: too many regions, regions on an edit."""
    if not request.regions:
        return
    if len(request.regions) > MAX_REGIONS:
        raise InvalidRequest(
            f"The job has {len(request.regions)} regional prompts; at most {MAX_REGIONS} are supported.",
            f"Merge regions that share a prompt, or remove {len(request.regions) - MAX_REGIONS} of them.",
        )
    if isinstance(request, EditRequest):
        raise InvalidRequest(
            "Regional prompts do not work with Edit (inversion) yet.",
            "Use img2img or inpaint for a regional edit, or remove the regions.",
        )


def usable_regions(regions: tuple[RegionPrompt, ...], size: tuple[int, int]) -> tuple[list[RegionPrompt], list[str]]:
    """The regions that change something at the work size `size` (masks resized to it), and a notice for each one
    left out."""
    kept: list[RegionPrompt] = []
    notices: list[str] = []
    for i, region in enumerate(regions, 1):
        mask = region.mask.convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.BILINEAR)
        if not region.prompt.strip():
            notices.append(f"Region {i} has no prompt: it was left out (the base prompt applies there).")
        elif mask.getbbox() is None:
            notices.append(
                f"Region {i} ({region.prompt[:40]!r}) covers nothing at the {size[0]}x{size[1]} work size: left out."
            )
        elif region.weight <= 0:
            notices.append(f"Region {i} ({region.prompt[:40]!r}) has weight 0: left out.")
        else:
            kept.append(RegionPrompt(region.prompt, mask, region.weight))
    return kept, notices


def prepare_regions(request: GenerateRequest) -> tuple[GenerateRequest, list[str]]:
    """The work request with only the regions that take part (masks at the work size), and the notices."""
    if not request.regions:
        return request, []
    assert request.width and request.height  # the work size, filled by the engine
    kept, notices = usable_regions(request.regions, (request.width, request.height))
    return request.replace(regions=tuple(kept)), notices


def describe(regions: list[RegionPrompt]) -> str:
    """For the info text: how many regions, with their weights when not all 1."""
    if all(r.weight == 1.0 for r in regions):
        return str(len(regions))
    return f"{len(regions)} (weights {', '.join(f'{r.weight:g}' for r in regions)})"


def region_shares(masks: list[Image.Image], regions: list[RegionPrompt], grid: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) each region's share a = min(1, weight * m) on an (h, w) grid, m the mean of its mask over each
    cell (BOX): a soft edge is a partial membership."""
    h, w = grid
    cells = torch.stack(
        [
            torch.frombuffer(bytearray(m.resize((w, h), Image.Resampling.BOX).tobytes()), dtype=torch.uint8)
            for m in masks
        ]
    ).float()  # (N, h*w)
    weights = torch.tensor([r.weight for r in regions], dtype=torch.float32)[:, None]
    return (cells / 255.0 * weights).clamp(max=1.0).reshape(len(masks), h, w)


@dataclass
class _Layout:
    """What every regional processor of one run shares: the region tokens and the per-grid attention biases."""

    tokens: torch.Tensor  # (1, sum L_i, D): the region prompts' encoder states, side by side on the token axis
    token_counts: list[int]  # L_i per region
    shares: dict[int, torch.Tensor]  # query length h*w -> (N, h*w): each region's share a = min(1, weight * m)
    batch: int  # images in the run: the conditional rows of encoder_hidden_states

    def bias(self, queries: int, base_tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 1, Lq, Lb + sum L_i) additive attention bias for one grid, broadcast over the batch and the heads."""
        key = (queries, base_tokens, dtype, device)
        cached = self._bias_cache.get(key)
        if cached is not None:
            return cached
        if queries not in self.shares:
            raise RuntimeError(f"Regional prompts: no latent grid has {queries} positions ({sorted(self.shares)}).")
        shares = self.shares[queries].to(device, torch.float32)  # (N, Lq)
        base = (1.0 - shares.sum(0)).clamp(min=0.0)  # (Lq,)
        columns = [torch.log(base)[:, None].expand(queries, base_tokens)]  # log 0 = -inf: masked out
        columns += [torch.log(share)[:, None].expand(queries, n) for share, n in zip(shares, self.token_counts)]
        bias = torch.cat(columns, dim=1)[None, None].to(dtype)  # (1, 1, Lq, Lk)
        self._bias_cache[key] = bias
        return bias

    def __post_init__(self) -> None:
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        self._token_cache: dict[tuple, torch.Tensor] = {}

    def region_tokens(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._token_cache:
            self._token_cache[key] = self.tokens.to(device, dtype)
        return self._token_cache[key]


class RegionalAttnProcessor:
    """A cross-attention processor: the conditional rows attend to base + region tokens under the layout's bias;
    the unconditional rows go through the layer's original processor unchanged."""

    def __init__(self, original: Any, layout: _Layout) -> None:
        self.original = original
        self.layout = layout

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        batch = self.layout.batch
        if encoder_hidden_states is None or attention_mask is not None or hidden_states.ndim != 3:
            # not the text cross-attention of an SD UNet (self-attention, a text attention mask, a 4-D input)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        rows = encoder_hidden_states.shape[0]  # 2B under CFG (uncond first, as every SD pipeline stacks them), else B
        if rows not in (batch, 2 * batch):
            raise RuntimeError(f"Regional prompts: {rows} rows of text states for a batch of {batch}.")
        uncond = rows - batch
        out_uncond = (
            self.original(attn, hidden_states[:uncond], encoder_hidden_states[:uncond], None, temb, *args, **kwargs)
            if uncond
            else None
        )
        hs = hidden_states[uncond:]  # (B, Lq, C)
        base = encoder_hidden_states[uncond:]  # (B, Lb, D)
        tokens = self.layout.region_tokens(base.dtype, base.device)  # (1, sum L_i, D)
        context = torch.cat([base, tokens.expand(hs.shape[0], -1, -1)], dim=1)  # (B, Lk = Lb + sum L_i, D)
        b, queries, _ = hs.shape
        query, key, value = project_heads(attn, hs, context)  # (B, heads, L, hd) each
        head_dim = query.shape[-1]
        # the bias broadcasts over batch and heads, where attn.prepare_attention_mask would repeat it per head
        bias = self.layout.bias(queries, base.shape[1], query.dtype, query.device)  # (1, 1, Lq, Lk)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)  # (B, Lq, inner)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if attn.residual_connection:
            out = out + hidden_states[uncond:]
        out = out / attn.rescale_output_factor
        return out if out_uncond is None else torch.cat([out_uncond, out])


def _grids(latent: tuple[int, int], levels: int = 7) -> list[tuple[int, int]]:
    """(h, w) of every UNet level for a latent of (h, w): each stride-2 downsample (padding 1) takes ceil(x / 2)."""
    h, w = latent
    out = []
    for _ in range(levels):
        out.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return out


def _region_masks(request: GenerateRequest, regions: list[RegionPrompt], size: tuple[int, int]) -> list[Image.Image]:
    """The masks as the pipeline sees the picture: the inpainting pipeline's "only masked" crop applies to them
    as it does to the image (diffusers' get_crop_region, then a resize to the work size)."""
    masks = [r.mask for r in regions]
    if isinstance(request, InpaintRequest) and request.only_masked and request.mask is not None:
        from diffusers.image_processor import VaeImageProcessor

        inpaint_mask = request.mask.convert("L")
        if inpaint_mask.size != size:
            inpaint_mask = inpaint_mask.resize(size, Image.Resampling.BILINEAR)
        box = VaeImageProcessor.get_crop_region(inpaint_mask, size[0], size[1], pad=request.only_masked_padding)
        masks = [m.crop(box).resize(size, Image.Resampling.BILINEAR) for m in masks]
    return masks


def _encode(loaded: LoadedModel, prompts: list[str], request: GenerateRequest, size: tuple[int, int]) -> torch.Tensor:
    """(N, L, D) encoder states of the region prompts, encoded as the base prompt is (clip skip where the shared
    prompt encoder takes it)."""
    embeds, _ = text_conditioning(loaded, prompts, size[1], size[0], **_clip(request))
    return embeds


def _clip(request: GenerateRequest) -> dict[str, Any]:
    """The clip skip for text_conditioning, where the shared prompt encoder takes it."""
    if "clip_skip" in inspect.signature(text_conditioning).parameters:
        return {"clip_skip": request.clip_skip}
    return {}


@contextmanager
def regional_attention(
    loaded: LoadedModel, request: GenerateRequest, batch: int, info: dict | None = None
) -> Iterator[list[RegionPrompt]]:
    """For the `with` block, the UNet's cross-attention follows the request's regions (see the module's rules);
    the original processors come back afterwards, also on cancel or error. No regions: nothing is touched.
    Adds info["Regions"] for the info text; yields the regions that take part."""
    assert request.width and request.height  # the work size
    size = (request.width, request.height)
    regions, _ = usable_regions(request.regions, size)
    if not regions:
        yield []
        return
    with torch.inference_mode():
        embeds = _encode(loaded, [r.prompt for r in regions], request, size)  # (N, L, D)
    tokens = embeds.reshape(1, -1, embeds.shape[-1])  # (1, N * L, D)
    factor = loaded.latent_factor
    masks = _region_masks(request, regions, size)
    shares: dict[int, torch.Tensor] = {}
    for h, w in _grids((size[1] // factor, size[0] // factor)):
        shares.setdefault(h * w, region_shares(masks, regions, (h, w)).flatten(1))  # (N, h*w)
    layout = _Layout(tokens=tokens, token_counts=[embeds.shape[1]] * len(regions), shares=shares, batch=batch)
    from diffusers.models.attention_processor import Attention

    unet = loaded.pipe.unet
    originals = [
        (module, module.processor)
        for module in unet.modules()
        if isinstance(module, Attention) and module.is_cross_attention
    ]
    try:
        for module, processor in originals:
            module.set_processor(RegionalAttnProcessor(processor, layout))  # pyright: ignore[reportArgumentType]
        if info is not None:
            info["Regions"] = describe(regions)
        yield regions
    finally:
        for module, processor in originals:
            module.set_processor(processor)


# -- the latent mode ------------------------------------------------------------------------------
# A1111 Regional Prompter's "Latent" mode, MultiDiffusion's region-based generation (Bar-Tal et al. 2023): each
# region gets its own UNet run on its crop, with its own full conditioning, and the noise predictions are blended.


def crop_span(start: int, end: int, extent: int, least: int, multiple: int = 8) -> tuple[int, int]:
    """(offset, length) on one latent axis of a crop holding [start, end): rounded out to `multiple` where the
    canvas allows, at least `least` long (the model's native latent size) where it fits, inside [0, extent)."""
    length = max(end - start, min(least, extent))
    length = min(extent, -(-length // multiple) * multiple)  # a multiple of 8 (the UNet's down factor) if it fits
    offset = (start // multiple) * multiple
    if offset + length < end:  # the rounded start left the end out: centre on the region instead
        offset = start - (length - (end - start)) // 2
    return max(0, min(offset, extent - length)), length


@dataclass
class _LatentRegion:
    """One region of a latent-mode run: its crop of the latent canvas, its blend share there, its conditioning."""

    top: int
    left: int
    height: int
    width: int
    share: torch.Tensor  # (1, 1, height, width): a_i on the crop, normalised where the regions' shares pass 1
    embeds: torch.Tensor  # (1, L, D) the region prompt's encoder states
    pooled: torch.Tensor | None  # (1, P) SDXL's pooled text embeds of the region prompt, else None

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.top : self.top + self.height, self.left : self.left + self.width]


def _latent_layout(
    loaded: LoadedModel, request: GenerateRequest, regions: list[RegionPrompt], size: tuple[int, int]
) -> tuple[list[_LatentRegion], torch.Tensor]:
    """The regions' crops, shares and conditioning, and the base prompt's share (1, 1, h, w) = 1 - sum a_i."""
    factor = loaded.latent_factor
    h, w = size[1] // factor, size[0] // factor
    masks = _region_masks(request, regions, size)
    shares = region_shares(masks, regions, (h, w))  # (N, h, w)
    total = shares.sum(0, keepdim=True)  # (1, h, w)
    shares = torch.where(total > 1, shares / total.clamp(min=1e-8), shares)  # overlaps split by share, base out
    base = (1.0 - shares.sum(0)).clamp(min=0.0)[None, None]  # (1, 1, h, w)
    native = loaded.pipe.unet.config.sample_size
    native_h, native_w = (native, native) if isinstance(native, int) else tuple(native)
    with torch.inference_mode():
        embeds, added = text_conditioning(loaded, [r.prompt for r in regions], size[1], size[0], **_clip(request))
    out = []
    for i, share in enumerate(shares):
        rows = torch.nonzero(share.amax(1) > 0).flatten()
        cols = torch.nonzero(share.amax(0) > 0).flatten()
        if not rows.numel():  # paint too faint to reach any latent pixel: nothing to blend
            continue
        top, height = crop_span(int(rows[0]), int(rows[-1]) + 1, h, native_h)
        left, width = crop_span(int(cols[0]), int(cols[-1]) + 1, w, native_w)
        out.append(
            _LatentRegion(
                top,
                left,
                height,
                width,
                share[top : top + height, left : left + width][None, None].clone(),
                embeds[i : i + 1],
                added["text_embeds"][i : i + 1] if added else None,
            )
        )
    return out, base


def _rows(value: Any, index: torch.Tensor, rows: int) -> Any:
    """`value` (a UNet argument) for the rows `index` of the CFG batch: tensors with one row per batch row are
    indexed, dicts (added_cond_kwargs) recursively, everything else (a scalar timestep, LoRA scales) is shared."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {k: _rows(v, index, rows) for k, v in value.items()}
    return value


class RegionalLatentForward:
    """Stands in for `unet.forward` during a latent-mode run. The CFG batch [uncond (B); cond (B)] comes in; each
    branch goes out as sum_i a_i * eps_i + (1 - sum a_i) * eps_base, eps_i the UNet on region i's crop (conditional
    rows: region i's prompt and pooled embeds; unconditional rows: the negative prompt), eps_base the UNet over the
    whole canvas. Every crop thus runs its own classifier-free guidance, as in MultiDiffusion: guiding a crop's
    prediction with the whole canvas's unconditional one pulls it to what the model draws at the canvas's size (one
    shape across the built-in model's 128x64) and loses the region's colour. 9-channel inpainting inputs are
    cropped whole (latents, mask, masked image)."""

    def __init__(
        self,
        original: Any,
        regions: list[_LatentRegion],
        base: torch.Tensor,
        empty: torch.Tensor,
        batch: int,
        factor: int,
    ):
        self.original = original
        self.empty = empty  # (1, chunk, D) the empty prompt's states: pads prompts to one length
        self.regions = regions
        self.base = base  # (1, 1, h, w)
        self.needs_base = bool(base.max() > 0)  # regions covering everything: no base call
        self.batch = batch
        self.factor = factor
        self.calls = 0  # UNet calls, for the tests and the bench
        # regions whose crops have one size run as one batch (their prompts share one length: text_conditioning)
        self.groups: dict[tuple[int, int, int], list[int]] = {}
        for i, region in enumerate(regions):
            self.groups.setdefault((region.height, region.width, region.embeds.shape[1]), []).append(i)

    def _pad(self, states: torch.Tensor, length: int) -> torch.Tensor:
        """(N, length, D): `states` with the empty prompt's chunk repeated after it (A1111's pad_cond_uncond)."""
        missing, rest = divmod(length - states.shape[1], self.empty.shape[1])
        if rest:
            raise RuntimeError(f"Regional prompts: {states.shape[1]} tokens cannot be padded to {length}.")
        if not missing:
            return states
        empty = self.empty.to(states.device, states.dtype).expand(states.shape[0], -1, -1)
        return torch.cat([states, empty.repeat(1, missing, 1)], dim=1)

    def _call(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.original(*args, return_dict=False, **kwargs)[0]

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kwargs) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        rows, batch = sample.shape[0], self.batch
        if rows not in (batch, 2 * batch):
            raise RuntimeError(f"Regional prompts: {rows} rows of latents for a batch of {batch}.")
        uncond = rows - batch
        out: torch.Tensor | None = None  # (rows, C_out, h, w)
        if self.needs_base:  # the negative and the base prompt over the whole canvas
            full = self._call(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
            out = full * self.base.to(full.device, full.dtype)
        for indices in self.groups.values():
            group = [self.regions[i] for i in indices]
            eps = self._group(group, sample, timestep, encoder_hidden_states, kwargs, uncond)  # (n*rows, C, h, w)
            if out is None:
                out = torch.zeros((rows, eps.shape[1], *sample.shape[-2:]), dtype=eps.dtype, device=eps.device)
            for k, region in enumerate(group):
                share = region.share.to(eps.device, eps.dtype)
                region.crop(out).add_(eps[k * rows : (k + 1) * rows] * share)
        assert out is not None  # at least one region
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    def _group(
        self,
        group: list[_LatentRegion],
        sample: torch.Tensor,
        timestep: Any,
        states: torch.Tensor,
        kwargs: dict,
        uncond: int,
    ) -> torch.Tensor:
        """(n*rows, C_out, h_r, w_r): the CFG batch on each region's crop, region k's rows at [k*rows, (k+1)*rows),
        the negative prompt on unconditional rows and region k's conditioning on conditional ones."""
        rows = m = sample.shape[0]
        span = torch.arange(rows)
        index = span.repeat(len(group))  # (n*rows,) the CFG rows each crop row comes from
        x = torch.cat([r.crop(sample) for r in group])  # (n*rows, C_in, h_r, w_r)
        # one length for both branches, as the pipeline's own prompts: the shorter padded with the empty chunk
        length = max(states.shape[1], group[0].embeds.shape[1])
        negative = self._pad(states[:uncond], length)  # (uncond, L, D)
        context = torch.cat(
            [
                torch.cat(
                    [negative, self._pad(r.embeds.to(states.device, states.dtype), length).expand(m - uncond, -1, -1)]
                )
                for r in group
            ]
        )  # (n*rows, L, D)
        extra = _rows(kwargs, index, rows)
        added = extra.get("added_cond_kwargs")
        if added and "text_embeds" in added and group[0].pooled is not None:  # SDXL: its own pooled and time ids
            added = dict(added)
            pooled = added["text_embeds"].clone()  # (n*m, P)
            conditional = (span >= uncond).to(pooled.device)
            for k, r in enumerate(group):
                assert r.pooled is not None
                part = pooled[k * m : (k + 1) * m]
                part[conditional] = r.pooled.to(pooled.device, pooled.dtype)
            added["text_embeds"] = pooled
            if "time_ids" in added:
                added["time_ids"] = self._time_ids(added["time_ids"], group, m)
            extra["added_cond_kwargs"] = added
        return self._call(x, _rows(timestep, index, rows), encoder_hidden_states=context, **extra)

    def _time_ids(self, time_ids: torch.Tensor, group: list[_LatentRegion], m: int) -> torch.Tensor:
        """SDXL's time ids (original size, crop top-left, target size; or the refiner's aesthetic score in place
        of the target) for each region: the crop's offset in pixels added to the crop, its size as the target."""
        time_ids = time_ids.clone()  # (n*m, 6 or 5)
        f = self.factor
        for k, r in enumerate(group):
            part = time_ids[k * m : (k + 1) * m]
            part[:, 2] += r.top * f
            part[:, 3] += r.left * f
            if time_ids.shape[1] == 6:
                part[:, 4] = r.height * f
                part[:, 5] = r.width * f
        return time_ids


@contextmanager
def regional_latents(
    loaded: LoadedModel, request: GenerateRequest, batch: int, info: dict | None = None
) -> Iterator[list[RegionPrompt]]:
    """For the `with` block, the UNet's forward runs each region on its crop and blends (RegionalLatentForward);
    the original forward comes back afterwards, also on cancel or error. No regions: nothing is touched.
    Adds info["Regions"] ("2, latent"); yields the regions that take part."""
    assert request.width and request.height  # the work size
    size = (request.width, request.height)
    regions, _ = usable_regions(request.regions, size)
    if not regions:
        yield []
        return
    layout, base = _latent_layout(loaded, request, regions, size)
    if not layout:
        yield []
        return
    with torch.inference_mode():
        empty, _ = text_conditioning(loaded, [""], size[1], size[0], **_clip(request))  # (1, chunk, D)
    unet = loaded.pipe.unet
    had_own = "forward" in vars(unet)  # an accelerate hook may have put one on the instance already
    original = unet.forward
    unet.forward = RegionalLatentForward(original, layout, base, empty, batch, loaded.latent_factor)
    try:
        if info is not None:
            info["Regions"] = describe(regions) + ", latent"
        yield regions
    finally:
        if had_own:
            unet.forward = original
        else:
            del unet.forward
