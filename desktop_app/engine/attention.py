"""The query / key / value projections of a diffusers `Attention` module, split into heads.

Our own attention processors (regional prompts' masks in `regions.py`, Prompt-to-Prompt's map edits in
`attention_control.py`) compute attention themselves, between diffusers' projections and its output layers; this
is the part of `AttnProcessor2_0.__call__` both need before they change what attends to what."""

from __future__ import annotations

from typing import Any

import torch


def project_heads(
    attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query, key, value), each (B, heads, L, head_dim), for image tokens `hidden_states` (B, Lq, C) attending to
    `encoder_hidden_states` (B, Lk, D; the text states), or to themselves when it is None (self-attention). The
    module's group norm, cross norm and q / k norms are applied as diffusers' AttnProcessor2_0 applies them."""
    b = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    else:
        context = encoder_hidden_states
    query = attn.to_q(hidden_states)  # (B, Lq, inner)
    key = attn.to_k(context)  # (B, Lk, inner)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, Lq, hd)
    key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, Lk, hd)
    value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value
