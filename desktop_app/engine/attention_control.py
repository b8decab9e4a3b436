"""Prompt-to-Prompt attention control (Hertz et al. 2022) for our own denoising loops, as attention processors.

An edit denoises a source branch beside the target one in the same UNet call (engine/inversion.py puts the
conditional rows last, source block then target block, B rows each). For the duration of that call every attention
layer of the UNet runs `ControlledAttnProcessor`, which computes the attention probabilities explicitly where a
controller wants them and hands them to it:

- **cross-attention replacement** (word swap and refinement in one): the two prompts' words are aligned
  (`align`); for the first `cross_replace` share of the steps each target token that has a source counterpart
  takes the source's map of it (a swapped word takes the map of the word it replaces; the start token and the
  padding take theirs), and each new token (an added word) keeps its own map;
- **re-weighting**: the target's attention probabilities of the named words' tokens are multiplied by their
  scales (every step; not renormalised, as in the paper);
- **self-attention injection**: for the first `self_replace` share of the steps the target's self-attention maps
  are the source's, in the layers at or below 1/16 of the latent's cells (P2P's 16x16 layers at SD's 64x64
  latent; at least 256 queries), which keeps the layout;
- **local blend**: the changed words' cross-attention maps in the target branch (the decoder's layers nearest
  16x16; for a deletion the source's words in the source branch) summed over the steps so far, dilated by one
  cell, upsampled to the latent, stretched to 0..1 and thresholded: where the target may differ from the source.
  Outside it the target latent is set to the source branch after every step (from BLEND_START of the steps on).
  (P2P takes the union with the source words' map; on the built-in model that map does not follow the shape.)

The unconditional rows are never touched. `WordMaps` reuses the processor to collect token-weighted
cross-attention maps for the attention-based suggested mask.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from desktop_app.core.errors import InvalidRequest
from desktop_app.engine import embeddings
from desktop_app.engine.attention import project_heads
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.prompts import at_step, parse_attention, prompt_schedule, strip_network_tags, tokenize_weighted

DEFAULT_CROSS_REPLACE = 0.8  # P2P's word-swap setting (share of the edit's steps)
DEFAULT_SELF_REPLACE = 0.4
BLEND_THRESHOLD = 0.3  # P2P's local-blend threshold, here on the min-max stretched map
BLEND_START = 0.2  # share of the steps before local blend starts (the maps are noise before)
SELF_QUERIES_FLOOR = 256  # self-attention injection in layers of at most max(this, latent cells / 16) queries
BLEND_CELLS = 256  # local blend reads the cross-attention layers whose cell count is nearest this (16x16)
# ... in these blocks: on the built-in model the decoder's maps follow the shape (a colour word's map overlaps the
# shape at IoU 0.86 in the last up block) where the encoder's are diffuse (0.58); P2P reads down and up at 16x16
MAP_PLACES = ("up",)
RECORD_BUDGET = 512 * 2**20  # bytes of source attention maps kept from the inversion (else the rows are run)

__all__ = [
    "Alignment",
    "ControlledAttnProcessor",
    "PromptToPrompt",
    "PromptTokens",
    "WordMaps",
    "align",
    "controlled_attention",
    "cross_grids",
    "grids",
    "map_grid",
    "normalise",
    "prompt_tokens",
    "reweight_vector",
]


# ------------------------------------------------------------------- tokens ---


@dataclass
class PromptTokens:
    """One prompt's token layout as the text encoder sees it (the first tokenizer's: CLIP-L on SDXL).

    ids: every position of the chunked sequence (chunks * chunk_length); content: True at a word's token (not the
    start, end or padding tokens); words: (key, positions) per word, key the word's token ids (a word ends at a
    token whose text ends in "</w>")."""

    ids: list[int]
    content: list[bool]
    words: list[tuple[tuple[int, ...], list[int]]]
    chunks: int
    chunk_length: int
    texts: list[str] = field(default_factory=list)  # each word as text, for messages


def prompt_tokens(loaded: LoadedModel, text: str) -> PromptTokens:
    """The token layout of `text` as `encoding.embed_texts` encodes it (prompt editing's first step, A1111 chunks)."""
    tokenizer = embeddings.encoders(loaded)[0][0]
    first = at_step(prompt_schedule(strip_network_tags(text).text, 1), 0)
    parsed = parse_attention(strip_network_tags(first).text)
    tokenized = tokenize_weighted(tokenizer, parsed, embeddings.token_embeddings(loaded, 0))
    start, end = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    ids = [token for chunk in tokenized.chunks for token in chunk]
    chunk_length = len(tokenized.chunks[0])
    content = [token not in (start, end) and 0 < p % chunk_length < chunk_length - 1 for p, token in enumerate(ids)]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words: list[tuple[tuple[int, ...], list[int]]] = []
    texts: list[str] = []
    current: list[int] = []
    for p, is_content in enumerate(content):
        if not is_content:
            continue
        current.append(p)
        piece = str(pieces[p])
        last = p + 1 >= len(ids) or not content[p + 1]
        if piece.endswith("</w>") or last:
            words.append((tuple(ids[q] for q in current), current))
            texts.append("".join(str(pieces[q]) for q in current).replace("</w>", ""))
            current = []
    return PromptTokens(ids, content, words, len(tokenized.chunks), chunk_length, texts)


@dataclass
class Alignment:
    """How the target prompt's tokens take the source's attention maps.

    mapper: (L, L), mapper[k, j] = share of source token k's map that target token j takes; alpha: (L,), 1 where
    the target token takes the source's map, 0 where it keeps its own (new words); src_changed / tgt_changed: the
    positions of the words that differ (local blend and the attention mask read their maps)."""

    mapper: torch.Tensor
    alpha: torch.Tensor
    src_changed: list[int]
    tgt_changed: list[int]
    aligned: bool = True
    notices: list[str] = field(default_factory=list)


def _trailing(tokens: PromptTokens, chunk: int) -> list[int]:
    """Positions after the start token that hold no word (end token and padding) in one chunk, in order."""
    base = chunk * tokens.chunk_length
    return [p for p in range(base + 1, base + tokens.chunk_length) if not tokens.content[p]]


def align(src: PromptTokens, tgt: PromptTokens, length: int) -> Alignment:
    """Align the target's tokens with the source's (`length` L: the embeddings' padded sequence length).

    Words are matched with difflib over their token ids: equal runs map token to token, a run of replaced words
    of the same count maps word to word (a word swap; a word of another token count spreads the source word's map
    evenly over its tokens), inserted words are new. The start token and the padding map by their place in the
    chunk; positions past both prompts' chunks (padding chunks) map to themselves. Prompts of different chunk
    counts are not aligned (alpha 0, a notice)."""
    mapper = torch.zeros(length, length)
    alpha = torch.zeros(length)
    src_changed: list[int] = []
    tgt_changed: list[int] = []
    notices: list[str] = []
    if src.chunks != tgt.chunks or src.chunk_length != tgt.chunk_length:
        notices.append(
            f"The source and target prompts take {src.chunks} and {tgt.chunks} chunks of tokens: Prompt-to-Prompt "
            "ran without word alignment (no cross-attention replacement or local blend; self-attention injection "
            "and re-weighting still apply)."
        )
        return Alignment(mapper, alpha, [], [], aligned=False, notices=notices)

    def take(k: int, j: int, share: float = 1.0) -> None:
        mapper[k, j] += share
        alpha[j] = 1.0

    for chunk in range(tgt.chunks):  # structure: start token, then end and padding in order
        base = chunk * tgt.chunk_length
        take(base, base)
        src_tail = _trailing(src, chunk)
        for order, j in enumerate(_trailing(tgt, chunk)):
            take(src_tail[min(order, len(src_tail) - 1)], j)
    for p in range(tgt.chunks * tgt.chunk_length, length):  # padding chunks shared by both
        take(p, p)
    src_keys = [key for key, _ in src.words]
    tgt_keys = [key for key, _ in tgt.words]
    matcher = difflib.SequenceMatcher(None, src_keys, tgt_keys, autojunk=False)
    common = 0
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            common += a1 - a0
            for (_, s_pos), (_, t_pos) in zip(src.words[a0:a1], tgt.words[b0:b1]):
                for k, j in zip(s_pos, t_pos):
                    take(k, j)
            continue
        for _, s_pos in src.words[a0:a1]:
            src_changed += s_pos
        for _, t_pos in tgt.words[b0:b1]:
            tgt_changed += t_pos
        if op == "replace" and a1 - a0 == b1 - b0:  # a word swap: word i takes the map of the word it replaces
            for (_, s_pos), (_, t_pos) in zip(src.words[a0:a1], tgt.words[b0:b1]):
                if len(s_pos) == len(t_pos):
                    for k, j in zip(s_pos, t_pos):
                        take(k, j)
                else:
                    for j in t_pos:
                        for k in s_pos:
                            take(k, j, 1.0 / len(t_pos))
        # an insert, a delete or a replace of another word count: the target words are new (refinement)
    if tgt.words and common == 0:
        notices.append(
            "The target prompt has no words in common with the source prompt: Prompt-to-Prompt kept every target "
            "word's own attention (a refinement of nothing); self-attention injection and local blend still apply."
        )
    return Alignment(mapper, alpha, src_changed, tgt_changed, notices=notices)


def reweight_vector(
    loaded: LoadedModel, tgt: PromptTokens, pairs: tuple[tuple[str, float], ...], length: int
) -> torch.Tensor | None:
    """(L,) scales of the target's attention per token for `parse_reweight` pairs, or None for none.

    A word (or words) the target prompt does not contain is an InvalidRequest naming it."""
    if not pairs:
        return None
    scales = torch.ones(length)
    keys = [key for key, _ in tgt.words]
    for phrase, scale in pairs:
        wanted = [key for key, _ in prompt_tokens(loaded, phrase).words]
        found = [i for i in range(len(keys) - len(wanted) + 1) if wanted and keys[i : i + len(wanted)] == wanted]
        if not found:
            raise InvalidRequest(
                f"The word {phrase!r} to re-weight is not in the target prompt.",
                "Re-weight words of the target prompt as written there, e.g. 'blue:2' for '... a blue circle ...'.",
            )
        for i in found:
            for _, positions in tgt.words[i : i + len(wanted)]:
                scales[positions] = float(scale)
    return scales


def grids(latent: tuple[int, int], levels: int = 7) -> list[tuple[int, int]]:
    """(h, w) of every UNet level for a latent of (h, w): each stride-2 downsample (padding 1) takes ceil(x / 2)."""
    h, w = latent
    out = []
    for _ in range(levels):
        out.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return out


def cross_grids(loaded: LoadedModel, latent: tuple[int, int]) -> list[tuple[int, int]]:
    """The grids at which this UNet has cross-attention (down blocks with attention, their mirrored up blocks, the
    mid block), largest first."""
    types = list(loaded.pipe.unet.config.down_block_types)
    levels = grids(latent, len(types) + 1)
    found = [levels[i] for i, kind in enumerate(types) if "CrossAttn" in kind]
    found.append(levels[len(types) - 1])  # the mid block
    return sorted(set(found), key=lambda g: -g[0] * g[1]) or [latent]


def map_grid(cross_grids: list[tuple[int, int]]) -> tuple[int, int]:
    """The cross-attention grid whose word maps local blend and the attention mask read: the one nearest 16x16."""
    return min(cross_grids, key=lambda g: abs(math.log(g[0] * g[1] / BLEND_CELLS)))


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (..., h, w) stretched to 0..1 (min to max): attention maps have a floor that is no signal."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


# --------------------------------------------------------------- processor ---


class ControlledAttnProcessor:
    """An attention processor that lets a controller see and edit the attention probabilities.

    Where the controller does not want the layer (or the input is not a plain (B, L, C) sequence) the layer's
    original processor runs unchanged (SDPA)."""

    def __init__(self, original: Any, controller: Any, is_cross: bool, place: str = "", name: str = "") -> None:
        self.original = original
        self.controller = controller
        self.is_cross = is_cross
        self.place = place  # "down", "mid" or "up": the UNet block the layer is in
        self.name = name  # the layer's module name: a key for recorded maps

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
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else 0
        if (
            hidden_states.ndim != 3
            or attention_mask is not None
            or attn.spatial_norm is not None
            or not self.controller.wants(self.is_cross, queries, self.place, self.name)
        ):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b = hidden_states.shape[0]
        query, key, value = project_heads(attn, hidden_states, encoder_hidden_states)  # (B, heads, L, hd) each
        head_dim = query.shape[-1]
        scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale  # (B, heads, Lq, Lk)
        probs = self.controller.edit(scores.softmax(dim=-1), self.is_cross, queries, self.place, self.name)
        out = probs.to(value.dtype) @ value  # (B, heads, Lq, hd)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim)  # (B, Lq, inner)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def controlled_attention(unet: Any, controller: Any) -> Iterator[None]:
    """For the `with` block every attention layer of `unet` runs a ControlledAttnProcessor; the original
    processors come back afterwards, also on cancel or error."""
    from diffusers.models.attention_processor import Attention

    originals = [
        (name, module, module.processor) for name, module in unet.named_modules() if isinstance(module, Attention)
    ]
    try:
        for name, module, processor in originals:
            place = name.split("_blocks", 1)[0] if "_blocks" in name else "mid"
            control = ControlledAttnProcessor(processor, controller, bool(module.is_cross_attention), place, name)
            module.set_processor(control)  # pyright: ignore[reportArgumentType]  (diffusers types its own classes)
        yield
    finally:
        for _, module, processor in originals:
            module.set_processor(processor)


# ------------------------------------------------------------- controllers ---


class PromptToPrompt:
    """The controller of one edit: set `step` (0-based) and `active` around each denoising UNet call.

    The conditional rows of a call are its last 2B: the source branch (B rows), then the target branch (B rows);
    with `with_source` False the call has no source rows and the source's maps come from a recording.

    Recording (direct inversion): the inversion's own UNet call on level k at its own timestep is the source
    branch's conditional call of denoising step n - k, so with `recording` on that call's source maps are kept
    (the layers this controller reads the source in at that step), up to RECORD_BUDGET bytes; steps in `recorded`
    then need no source rows."""

    def __init__(
        self,
        alignment: Alignment,
        *,
        steps: int,
        batch: int,
        latent: tuple[int, int],
        cross_grids: list[tuple[int, int]],
        cross_replace: float,
        self_replace: float,
        local_blend: bool,
        reweight: torch.Tensor | None = None,
    ) -> None:
        self.alignment = alignment
        self.steps, self.batch, self.latent = steps, batch, latent
        self.cross_steps = int(round(cross_replace * steps)) if alignment.aligned else 0
        self.self_steps = int(round(self_replace * steps))
        self.self_queries = max(SELF_QUERIES_FLOOR, latent[0] * latent[1] // 16)
        self.reweight = reweight
        changed = alignment.aligned and bool(alignment.src_changed or alignment.tgt_changed)
        self.local_blend = local_blend and changed
        self.blend_grid = map_grid(cross_grids)
        self.blend_start = int(math.ceil(BLEND_START * steps))
        self.step = 0
        self.active = False
        self.with_source = True
        self.recording = False
        self.recorded: set[int] = set()  # steps whose source maps are all kept
        self._kept: dict[tuple[int, str], torch.Tensor] = {}  # (step, layer) -> source probs (B, heads, Lq, Lk)
        self._kept_bytes = 0
        self._overflow = False
        self._maps: torch.Tensor | None = None  # (2, B, 1, h, w) source / target changed words, summed
        self.last_mask: torch.Tensor | None = None  # (B, 1, h, w) latent mask of the last blend, 1 = may change

    # -- what the processor asks ---------------------------------------------------------
    def _blends(self, queries: int, place: str) -> bool:
        return self.local_blend and place in MAP_PLACES and queries == self.blend_grid[0] * self.blend_grid[1]

    def _reads_source(self, is_cross: bool, queries: int, place: str) -> bool:
        """Whether this step's edit of the layer reads the source branch's maps."""
        if is_cross:
            deletion = self._blends(queries, place) and not self.alignment.tgt_changed  # blends on source words
            return self.step < self.cross_steps or deletion
        return self.step < self.self_steps and queries <= self.self_queries

    def needs_source(self, step: int) -> bool:
        """Whether denoising step `step` reads any source map (else the source's conditional rows can go)."""
        deletion = self.local_blend and not self.alignment.tgt_changed
        return step < self.cross_steps or step < self.self_steps or deletion

    def wants(self, is_cross: bool, queries: int, place: str = "", name: str = "") -> bool:
        if not self.active:
            return False
        if self.recording:
            return self._reads_source(is_cross, queries, place)
        if is_cross:
            return self._blends(queries, place) or self.step < self.cross_steps or self.reweight is not None
        return self.step < self.self_steps and queries <= self.self_queries

    def edit(self, probs: torch.Tensor, is_cross: bool, queries: int, place: str = "", name: str = "") -> torch.Tensor:
        """probs (R, heads, Lq, Lk), R = uncond rows + 2B (or + B without source rows): the target block edited
        from the source block."""
        b = self.batch
        rows = probs.shape[0]
        if self.recording:  # the inversion's call: B source rows
            if self._kept_bytes + probs.numel() * probs.element_size() > RECORD_BUDGET:
                self.recording, self._overflow = False, True
                self._kept.clear()
                self.recorded.clear()
            else:
                self._kept[(self.step, name)] = probs.clone()
                self._kept_bytes += probs.numel() * probs.element_size()
            return probs
        if self.with_source:
            if rows < 2 * b:
                return probs
            head, src, tgt = probs[: rows - 2 * b], probs[rows - 2 * b : rows - b], probs[rows - b :]
        else:
            head, tgt = probs[: rows - b], probs[rows - b :]
            kept = self._kept.get((self.step, name))
            src = kept.to(probs.dtype) if kept is not None else None
        if is_cross:
            if self._blends(queries, place):
                self._store(src, tgt)
            if self.step < self.cross_steps and src is not None:
                mapper = self.alignment.mapper.to(src.device, src.dtype)  # (Lk, Lk)
                alpha = self.alignment.alpha.to(src.device, src.dtype)  # (Lk,)
                tgt = alpha * (src @ mapper) + (1 - alpha) * tgt
            if self.reweight is not None:
                tgt = tgt * self.reweight.to(tgt.device, tgt.dtype)
        elif self.step < self.self_steps and src is not None:
            tgt = src
        if not self.with_source:
            return torch.cat([head, tgt])
        assert src is not None  # the call's own source rows
        return torch.cat([head, src, tgt])

    def record(self, step: int) -> None:
        """Start keeping the source maps of denoising step `step` (call before the inversion's UNet call)."""
        self.step, self.active = step, True
        self.recording = not self._overflow

    def recorded_step(self, step: int) -> None:
        """The inversion's call for `step` is done: its maps are kept unless the budget ran out."""
        if self.recording:
            self.recorded.add(step)
        self.active = self.recording = False

    def _store(self, src: torch.Tensor | None, tgt: torch.Tensor) -> None:
        h, w = self.blend_grid
        t = tgt.mean(1)[..., self.alignment.tgt_changed].sum(-1)  # (B, Lq)
        s = t.new_zeros(t.shape) if src is None else src.mean(1)[..., self.alignment.src_changed].sum(-1)
        maps = torch.stack([s, t]).reshape(2, self.batch, 1, h, w).float()
        self._maps = maps if self._maps is None else self._maps + maps

    # -- after each step -----------------------------------------------------------------
    def blend(self, x: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
        """The target latent x (B, C, h, w) kept equal to the source branch x_src outside the changed words' map."""
        if not self.local_blend or self._maps is None or self.step < self.blend_start:
            return x
        maps = F.max_pool2d(self._maps.flatten(0, 1), 3, 1, padding=1)  # (2B, 1, h', w') dilated by one cell
        maps = F.interpolate(maps, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        binary = (normalise(maps) > BLEND_THRESHOLD).float().reshape(2, self.batch, 1, *x.shape[2:])
        # the target's changed words (a deletion has none: then the source's words)
        mask = (binary[1] if self.alignment.tgt_changed else binary[0]).to(x.dtype)  # (B, 1, h, w)
        self.last_mask = mask
        return x_src + mask * (x - x_src)


class WordMaps:
    """Collects, per row of a UNet call, each query's cross-attention weighted by a weight per token: in every
    layer local blend reads (the decoder's at `grid`), upsampled to the latent grid, averaged over heads.

    `maps[name]` (R, h, w) per layer, in the order the UNet runs them (the last one nearest the output). Weights
    (R, Lk) of 1 at chosen positions give those words' maps; the suggested mask weighs each token by how much its
    embedding changes between the prompts (a causal text encoder carries a changed word into every later token)."""

    def __init__(self, weights: torch.Tensor, latent: tuple[int, int], grid: tuple[int, int]) -> None:
        self.weights = weights  # (R, Lk)
        self.latent = latent
        self.grid = grid  # the layers read: MAP_PLACES blocks at this grid (`map_grid`)
        self.maps: dict[str, torch.Tensor] = {}

    def wants(self, is_cross: bool, queries: int, place: str = "", name: str = "") -> bool:
        return is_cross and place in MAP_PLACES and queries == self.grid[0] * self.grid[1]

    def edit(self, probs: torch.Tensor, is_cross: bool, queries: int, place: str = "", name: str = "") -> torch.Tensor:
        weights = self.weights.to(probs.device, torch.float32)[:, :, None]  # (R, Lk, 1)
        rows = (probs.float().mean(1) @ weights)[..., 0]  # (R, Lq)
        up = F.interpolate(rows.reshape(-1, 1, *self.grid), size=self.latent, mode="bilinear", align_corners=False)
        self.maps[name] = up[:, 0]  # (R, h, w)
        return probs
