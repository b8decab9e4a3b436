"""The one VAE encode, VAE decode and prompt embedding that sampling, inversion and the engine's services share.

Kept in one place so every caller gets the same scaling, shift and fp16 upcast (copies of them drifted before), and
the same prompt meaning: AUTOMATIC1111's (see `engine/prompts.py` for the parsing and why no library does it).
A1111's weighting ("Original" emphasis, `modules/sd_hijack_clip.py` + `sd_emphasis.py`): each 77-token chunk is
encoded alone, each token's hidden state multiplied by its weight, then the chunk rescaled so its mean equals the
unweighted chunk's mean (skipped where that mean is ~0: `_encode_chunks`); the chunks are joined along the sequence. SDXL does this per text encoder and joins them.

Flow models (SD 3.x, Flux) get their prompts as plain text (`flow_prompt`): their pipelines encode it with T5 (and
CLIP), where A1111's weights, BREAK and prompt editing mean nothing; what was dropped is said in a notice. Their VAEs
(16 channels, `shift_factor`) go through the same `vae_encode` / `vae_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from desktop_app.engine import embeddings
from desktop_app.engine.device import vae_precision
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.prompts import (
    BREAK,
    MAX_CHUNKS,
    at_step,
    parse_attention,
    prompt_schedule,
    strip_network_tags,
    syntax_notices,
    tokenize_weighted,
)

MEAN_FLOOR = 1e-3  # a chunk whose mean is below this share of its mean magnitude is "zero-mean" (see _encode_chunks)


@dataclass
class Conditioning:
    """One prompt's text-encoder output: embeds (1, L, D), L a multiple of the encoder's 77; SDXL's pooled (1, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class EncodedText:
    conditioning: Conditioning
    used: set[str] = field(default_factory=set)  # textual-inversion names
    truncated: int = 0


def _clip_skip_applies(loaded: LoadedModel) -> bool:
    """A1111 applies clip skip to SD 1.x only: SD 2.x always takes the penultimate layer (diffusers' SD 2.x text
    encoders end there already) and SDXL the penultimate of both encoders (its 'sdxl_clip_l_skip' is off)."""
    return not loaded.is_xl and not loaded.family.startswith("sd2")


def clip_skip_notice(loaded: LoadedModel, clip_skip: int | None) -> str | None:
    if clip_skip is None or clip_skip <= 1 or _clip_skip_applies(loaded):
        return None
    kind = "SDXL" if loaded.is_xl else "SD 2.x"
    return f"Clip skip {clip_skip} is not applied: {kind} models always use the penultimate layer, as in AUTOMATIC1111."


def _final_norm(encoder):
    """The text encoder's last LayerNorm (transformers 5 has it on the model, 4.x on `text_model`)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def _encode_chunks(
    loaded: LoadedModel, index: int, chunks: list[list[int]], multipliers: list[list[float]], clip_skip: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A1111's process_tokens for each chunk: encode, weight each token's state, restore the chunk's mean."""
    tokenizer, encoder = embeddings.encoders(loaded)[index]
    device = loaded.pipe._execution_device
    end, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    zs, pooled = [], None
    for tokens, weights in zip(chunks, multipliers):
        ids = torch.tensor([tokens], dtype=torch.long)
        if pad is not None and pad != end:  # SD 2.x / clip_g: pad after the first end token, not more end tokens
            first = tokens.index(end)
            ids[0, first + 1 :] = pad
        out = encoder(ids.to(device), output_hidden_states=True)
        if loaded.is_xl:
            z = out.hidden_states[-2]
            if pooled is None and hasattr(out, "text_embeds"):
                pooled = out.text_embeds  # the first chunk's, as A1111 (zs[0].pooled)
        elif clip_skip > 1:
            z = _final_norm(encoder)(out.hidden_states[-clip_skip])
        else:
            z = out.last_hidden_state
        z32 = z.float()
        w = torch.tensor(weights, dtype=torch.float32, device=z32.device)[None, :, None]
        if not torch.all(w == 1):
            before = z32.mean()
            weighted = z32 * w
            ratio = before / weighted.mean()
            # A1111 always restores the mean; on a text encoder whose states average to ~0 (the built-in model:
            # 7e-5 of their size) that divides noise by noise and can flip or blow up the whole chunk, so there
            # the weights apply without the restore (A1111's "No norm" emphasis). Real CLIPs are far from it.
            stable = before.abs() >= MEAN_FLOOR * z32.abs().mean() and bool(torch.isfinite(ratio)) and ratio > 0
            z32 = weighted * ratio if stable else weighted
        zs.append(z32.to(z.dtype))
    return torch.cat(zs, dim=1), pooled


def encode_text(loaded: LoadedModel, text: str, clip_skip: int | None = None) -> EncodedText:
    """One prompt (no prompt editing: that is `plan_prompts`) with A1111's weights, chunks and embeddings.

    `<lora:...>` tags are taken out first, so they never reach the text encoder."""
    clean = strip_network_tags(text).text
    parsed = parse_attention(clean)
    skip = int(clip_skip or 1) if _clip_skip_applies(loaded) else 1
    pairs = embeddings.encoders(loaded)
    tokenized = [
        tokenize_weighted(tokenizer, parsed, embeddings.token_embeddings(loaded, i))
        for i, (tokenizer, _) in enumerate(pairs)
    ]
    count = max(len(t.chunks) for t in tokenized)
    parts, pooled = [], None
    for i, tok in enumerate(tokenized):
        chunks, mults = list(tok.chunks), list(tok.multipliers)
        if len(chunks) < count:  # SDXL's two tokenizers may chunk apart: pad with empty chunks
            empty = tokenize_weighted(pairs[i][0], [("", 1.0)])
            chunks += empty.chunks * (count - len(chunks))
            mults += empty.multipliers * (count - len(mults))
        z, p = _encode_chunks(loaded, i, chunks, mults, skip)
        parts.append(z)
        pooled = p if p is not None else pooled
    embeds = torch.cat(parts, dim=-1)
    used = set().union(*(t.used for t in tokenized))
    return EncodedText(Conditioning(embeds, pooled), used, max(t.truncated for t in tokenized))


def pad_to_length(conds: list[Conditioning], empty: Conditioning) -> list[Conditioning]:
    """Conditionings of one length: shorter ones get the empty prompt's chunk repeated (A1111's pad_cond_uncond)."""
    length = max(c.embeds.shape[1] for c in conds)
    chunk = empty.embeds.shape[1]
    out = []
    for c in conds:
        missing = (length - c.embeds.shape[1]) // chunk
        if missing > 0:
            c = Conditioning(torch.cat([c.embeds, empty.embeds.repeat(1, missing, 1)], dim=1), c.pooled)
        out.append(c)
    return out


def embed_texts(loaded: LoadedModel, texts: list[str], clip_skip: int | None = None) -> list[Conditioning]:
    """Each text's conditioning (at prompt editing's first step), all padded to one length so they can be batched."""
    cache: dict[str, Conditioning] = {}
    embeddings.prepare(loaded, texts)
    for text in texts:
        if text not in cache:
            first = at_step(prompt_schedule(strip_network_tags(text).text, 1), 0)
            cache[text] = encode_text(loaded, first, clip_skip).conditioning
    empty = cache.get("") or encode_text(loaded, "", clip_skip).conditioning
    return pad_to_length([cache[t] for t in texts], empty)


def text_conditioning(
    loaded: LoadedModel, prompts: list[str], height: int, width: int, clip_skip: int | None = None
) -> tuple[torch.Tensor, dict | None]:
    """What a direct UNet call needs for these prompts: encoder_hidden_states, and for SDXL the added_cond_kwargs.

    SD 1.x / 2.x: (embeds (B, L, D), None). SDXL: both text encoders' penultimate states joined,
    plus {"text_embeds": pooled, "time_ids": (orig size, crop 0,0, target size)},
    as the SDXL pipelines build them. For code (DDIM inversion) that calls
    `unet(x, t, encoder_hidden_states=e, added_cond_kwargs=c)` itself. A1111's weights, chunks, embeddings and
    clip skip apply; L is the longest prompt's, the others padded with the empty prompt's chunk.
    """
    pipe = loaded.pipe
    with torch.inference_mode():
        conds = embed_texts(loaded, prompts, clip_skip)
    embeds = torch.cat([c.embeds for c in conds])
    if not loaded.is_xl:
        return embeds, None
    pooled = torch.cat([c.pooled for c in conds if c.pooled is not None])
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    return embeds, {"text_embeds": pooled, "time_ids": time_ids.to(loaded.device).repeat(len(prompts), 1)}


def embed_prompt(loaded: LoadedModel, text: str, clip_skip: int | None = None) -> torch.Tensor:
    """(1, L, D) text-encoder hidden states of one prompt ("" gives the unconditional embedding)."""
    embeds, _ = text_conditioning(loaded, [text], 64, 64, clip_skip)
    return embeds


def embed_prompts(loaded: LoadedModel, texts: list[str], clip_skip: int | None = None) -> list[torch.Tensor]:
    """(1, L, D) of each text, one L for all (a long prompt's chunks; the others padded), for callers that batch."""
    embeds, _ = text_conditioning(loaded, texts, 64, 64, clip_skip)
    return list(embeds.split(1))


# -- the conditioning of a pipeline run, with prompt editing -------------------------------
@dataclass
class PromptPlan:
    """A job's positive and negative conditioning per step (prompt editing / alternation), all of one length.

    `kwargs(batch)` gives the pipeline's prompt_embeds (+ SDXL pooled) for step 0; `on_step` swaps them in the
    pipeline's step callback when the schedule says so (diffusers reads `prompt_embeds`, already joined
    [negative, positive] under guidance, and SDXL's `add_text_embeds`, back from `callback_kwargs`)."""

    positive: list[tuple[int, Conditioning]]
    negative: list[tuple[int, Conditioning]]
    batch: int = 1
    used: set[str] = field(default_factory=set)
    _current: tuple[int, int] = (-1, -1)

    @property
    def varies(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        return at_step(self.positive, step), at_step(self.negative, step)

    def kwargs(self) -> dict[str, Any]:
        pos, neg = self.at(0)
        self._current = (id(pos), id(neg))
        out: dict[str, Any] = {
            "prompt_embeds": pos.embeds.repeat(self.batch, 1, 1),
            "negative_prompt_embeds": neg.embeds.repeat(self.batch, 1, 1),
        }
        if pos.pooled is not None and neg.pooled is not None:
            out["pooled_prompt_embeds"] = pos.pooled.repeat(self.batch, 1)
            out["negative_pooled_prompt_embeds"] = neg.pooled.repeat(self.batch, 1)
        return out

    def callback_inputs(self) -> list[str]:
        if not self.varies:
            return []
        xl = self.positive[0][1].pooled is not None
        return ["prompt_embeds", "add_text_embeds"] if xl else ["prompt_embeds"]

    def on_step(self, pipe, next_step: int, callback_kwargs: dict) -> dict:
        """Before step `next_step` (from 0): the conditioning that step uses, when it differs from the last one."""
        if not self.varies:
            return callback_kwargs
        pos, neg = self.at(next_step)
        if (id(pos), id(neg)) == self._current:
            return callback_kwargs
        self._current = (id(pos), id(neg))
        old = callback_kwargs["prompt_embeds"]
        guided = bool(getattr(pipe, "do_classifier_free_guidance", False))
        embeds = pos.embeds.repeat(self.batch, 1, 1)
        if guided:
            embeds = torch.cat([neg.embeds.repeat(self.batch, 1, 1), embeds])
        callback_kwargs["prompt_embeds"] = embeds.to(old.device, old.dtype)
        if "add_text_embeds" in callback_kwargs and pos.pooled is not None and neg.pooled is not None:
            old_pooled = callback_kwargs["add_text_embeds"]
            pooled = pos.pooled.repeat(self.batch, 1)
            if guided:
                pooled = torch.cat([neg.pooled.repeat(self.batch, 1), pooled])
            callback_kwargs["add_text_embeds"] = pooled.to(old_pooled.device, old_pooled.dtype)
        return callback_kwargs


def plan_prompts(
    loaded: LoadedModel,
    prompt: str,
    negative_prompt: str,
    steps: int,
    *,
    clip_skip: int | None = None,
    batch: int = 1,
) -> PromptPlan:
    """Encode a job's prompts as A1111 does: tags out, prompt editing per step over `steps` (A1111 counts the
    request's steps), emphasis, BREAK, chunks, embeddings, clip skip; every conditioning padded to one length.
    SDXL's empty negative prompt is zeros, as A1111 (and diffusers) give it."""
    used: set[str] = set()
    cache: dict[str, Conditioning] = {}
    schedules = []
    embeddings.prepare(loaded, [prompt, negative_prompt])
    with torch.inference_mode():
        for text in (prompt, negative_prompt):
            entries = []
            for end, variant in prompt_schedule(strip_network_tags(text).text, steps):
                if variant not in cache:
                    encoded = encode_text(loaded, variant, clip_skip)
                    used |= encoded.used
                    cache[variant] = encoded.conditioning
                entries.append((end, cache[variant]))
            schedules.append(entries)
        if "" not in cache:
            cache[""] = encode_text(loaded, "", clip_skip).conditioning
        padded = iter(pad_to_length([c for s in schedules for _, c in s], cache[""]))
        positive = [(end, next(padded)) for end, _ in schedules[0]]
        negative = [(end, next(padded)) for end, _ in schedules[1]]
    if loaded.is_xl and not negative_prompt.strip():
        negative = [
            (end, Conditioning(torch.zeros_like(c.embeds), None if c.pooled is None else torch.zeros_like(c.pooled)))
            for end, c in negative
        ]
    return PromptPlan(positive, negative, batch, used)


# -- flow models: plain text -------------------------------------------------------------------------------------
FLOW_T5_LENGTH = {"sd3": 256, "flux": 512}  # the pipelines' max_sequence_length defaults (T5 tokens)


def flow_prompt(text: str, steps: int = 1, label: str = "Prompt") -> tuple[str, list[str]]:
    """The text a flow pipeline gets for an A1111-style prompt, and what was not applied: `<lora:>` tags out,
    the first step's text of prompt editing / alternation, emphasis brackets and weights removed (their words
    kept), BREAK as a comma. SD 3.x and Flux encode with T5, where none of these has a meaning."""
    notices: list[str] = []
    clean = strip_network_tags(text or "").text
    schedule = prompt_schedule(clean, max(1, steps))
    if len(schedule) > 1:
        notices.append(
            f"{label}: prompt editing and alternation are Stable Diffusion syntax; SD 3.x and FLUX.1 use the first "
            "step's text."
        )
    parts = parse_attention(schedule[0][1])
    if any(weight != 1.0 and not (part == BREAK and weight == -1.0) for part, weight in parts):
        notices.append(
            f"{label}: prompt weights such as (word:1.2) and [word] are Stable Diffusion syntax; SD 3.x and FLUX.1 "
            "read the words unweighted."
        )
    if any(part == BREAK and weight == -1.0 for part, weight in parts):
        notices.append(f"{label}: BREAK is Stable Diffusion syntax; SD 3.x and FLUX.1 read it as a comma.")
    words = ", ".join(
        "".join(p for p, _ in group).strip() for group in _split_at_break(parts) if "".join(p for p, _ in group).strip()
    )
    return " ".join(words.split()), notices


def _split_at_break(parts: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    groups: list[list[tuple[str, float]]] = [[]]
    for part, weight in parts:
        if part == BREAK and weight == -1.0:
            groups.append([])
        else:
            groups[-1].append((part, weight))
    return groups


def flow_t5(loaded: LoadedModel) -> tuple[Any, int]:
    """The T5 tokenizer of a flow pipeline and the token count its pipelines keep (the rest is cut)."""
    pipe = loaded.pipe
    if loaded.family.startswith("sd3"):
        return getattr(pipe, "tokenizer_3", None), FLOW_T5_LENGTH["sd3"]
    return getattr(pipe, "tokenizer_2", None), FLOW_T5_LENGTH["flux"]


def flow_prompt_report(loaded: LoadedModel, request: Any) -> list[str]:
    """What a flow model does not apply of a request's prompts (see `flow_prompt`) and prompts past T5's length."""
    notices: list[str] = []
    steps = int(request.steps or 1)
    texts = [("Prompt", request.prompt), ("Negative prompt", request.negative_prompt)]
    source = getattr(request, "source_prompt", None)
    if source:
        texts.append(("Source prompt", source))
    tokenizer, limit = flow_t5(loaded)
    for label, text in texts:
        plain, found = flow_prompt(text or "", steps, label)
        notices += found
        if tokenizer is not None and plain:
            count = len(tokenizer(plain, add_special_tokens=True)["input_ids"])
            if count > limit:
                notices.append(f"{label} is too long: the last {count - limit} of its {count} T5 tokens were dropped.")
    return notices


def prompt_report(loaded: LoadedModel, request: Any) -> tuple[list[str], set[str]]:
    """What to tell the user about a request's prompts before it runs (brackets, weights that are not numbers,
    tokens past the limit, clip skip not applied, prompt editing in an edit), and the embeddings they use.
    Tokenizes only: no text encoder runs. Flow models: `flow_prompt_report` (no embeddings)."""
    if loaded.is_flow:  # the SD-only options a flow model leaves out: flow_sampling.flow_option_notices (the engine)
        return flow_prompt_report(loaded, request), set()
    notices: list[str] = []
    used: set[str] = set()
    steps = int(request.steps or 1)
    texts = [("Prompt", request.prompt), ("Negative prompt", request.negative_prompt)]
    source = getattr(request, "source_prompt", None)
    if source is not None:
        texts.append(("Source prompt", source))
    pairs = embeddings.encoders(loaded)
    known = [embeddings.token_embeddings(loaded, i) for i in range(len(pairs))]
    for label, text in texts:
        clean = strip_network_tags(text or "").text
        notices += syntax_notices(clean, label)
        schedule = prompt_schedule(clean, steps)
        if len(schedule) > 1 and source is not None:
            notices.append(
                f"{label}: prompt editing and alternation do not apply to Edit; the first step's text is used."
            )
            schedule = schedule[:1]
        dropped = 0
        for _, variant in schedule:
            parsed = parse_attention(variant)
            for i, (tokenizer, _) in enumerate(pairs):
                tok = tokenize_weighted(tokenizer, parsed, known[i])
                used |= tok.used
                dropped = max(dropped, tok.truncated)
        if dropped:
            notices.append(
                f"{label} is too long: the last {dropped} tokens were dropped (at most {MAX_CHUNKS} chunks of 75)."
            )
    note = clip_skip_notice(loaded, request.clip_skip)
    if note:
        notices.append(note)
    return notices, used


def vae_decode(loaded: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> pixels (B, 3, H, W) in [-1, 1], upcast to fp32 when the VAE asks for it."""
    vae = loaded.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with vae_precision(vae) as dtype:
        latents = latents.to(vae.device, dtype) / vae.config.scaling_factor + shift
        return vae.decode(latents, return_dict=False)[0]


def vae_encode(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, h, w) (posterior mean), upcast like vae_decode."""
    vae = loaded.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with vae_precision(vae) as dtype:
        mean = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mean
        return ((mean - shift) * vae.config.scaling_factor).to(loaded.dtype)


def encode_image(loaded: LoadedModel, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Scaled latent (1, C, h, w) of an image at `size` (default: its own, rounded down to a multiple of 8):
    the deterministic posterior mean that inversion, the forward process and mask suggestion need."""
    pipe = loaded.pipe
    width, height = size or (max(64, image.width - image.width % 8), max(64, image.height - image.height % 8))
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).to(loaded.device)
    with torch.inference_mode():
        return vae_encode(loaded, pixels)


def decode_images(loaded: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled latents (B, C, h, w) -> B RGB images."""
    with torch.inference_mode():
        pixels = vae_decode(loaded, latents)
    return loaded.pipe.image_processor.postprocess(pixels, output_type="pil")
