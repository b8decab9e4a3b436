"""Prompts as AUTOMATIC1111 reads them: `<lora:NAME:W>` tags, prompt editing and alternation, emphasis, BREAK, chunks.

Which library, and why: the issue asked for compel or sd_embed. Neither gives A1111's numbers, so neither is used:
- compel (2.5.1, PyPI) parses its own syntax, `(word)1.3` / `word++` / `.blend()`; `(word:1.3)`, `[word]`, BREAK,
  `[from:to:when]` and `[a|b]` are taken as plain text. It weights by interpolating from the empty prompt's
  embedding and down-weights by masking tokens out, not by A1111's multiply-and-restore-the-mean.
- sd_embed (GitHub only, not on PyPI) copies A1111's bracket parser, but multiplies without restoring the mean,
  hard-codes SD 1.x's start / end token ids (wrong for SD 2.x's padding), has no SD 2.x entry point, no BREAK,
  no prompt editing, no alternation and no textual-inversion handling.
So the parsing follows A1111's rules here (`modules/prompt_parser.py`, `modules/sd_hijack_clip.py`), with `lark`
(the parser library A1111 itself uses, pyproject: "lark>=1.1") for the prompt-editing grammar, and the weights are
applied in `engine/encoding.py` exactly as A1111's "Original" emphasis does.

Nothing here needs torch: the engine, the notices and the tests all call it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from desktop_app.core.errors import UserError

CHUNK = 75  # tokens per chunk between the start and end tokens (A1111: 75 of the encoder's 77)
COMMA_BACKTRACK = 20  # A1111's default "Prompt word wrap length limit": text after a comma this near moves on
MAX_CHUNKS = 32  # 2400 tokens: beyond this a prompt is cut (and said so); A1111 has no limit
BREAK = "BREAK"

# `<kind:args>` as A1111's extra networks write them: `<lora:name>`, `<lora:name:0.8>`, `<hypernet:x:1>`
_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111's emphasis tokens: escapes, openers, `:weight)`, closers, plain text, a lone colon
_ATTENTION = re.compile(
    r"""\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:""",
    re.X,
)
# `(text:something)` whose `something` is not read as a weight: A1111 then keeps it as text
_LOOKS_WEIGHTED = re.compile(r"\(([^()\[\]:]*):([^()\[\]:]*)\)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:NAME:WEIGHT>` of a prompt."""

    name: str
    weight: float
    text: str  # the tag as written, for messages


@dataclass
class ParsedPrompt:
    """A prompt's text without its network tags, what the tags asked for, and what the user should be told."""

    text: str
    loras: list[LoraTag] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


# -- <lora:...> tags -----------------------------------------------------------------
def strip_network_tags(prompt: str, label: str = "Prompt") -> ParsedPrompt:
    """Take A1111's `<kind:...>` tags out of a prompt (as A1111 does before the text reaches CLIP).

    `<lora:NAME>` / `<lora:NAME:W>` / `<lora:NAME:W_TE:W_UNET>` (and `<lyco:...>`) become LoraTags; other kinds
    (hypernetworks) are removed with a notice. A weight that is not a number is an error naming the tag."""
    parsed = ParsedPrompt(prompt)
    if "<" not in prompt:
        return parsed

    def take(match: re.Match[str]) -> str:
        kind, args = match[1].lower(), match[2].split(":")
        tag = match[0]
        if kind not in ("lora", "lyco"):
            parsed.notices.append(f"{label}: {tag} was removed: {match[1]} networks are not supported.")
            return ""
        name = args[0].strip()
        if not name:
            raise UserError(f"{label}: {tag} names no LoRA.", "Write it as <lora:NAME:0.8>.")
        weights = []
        for arg in args[1:3]:
            arg = arg.strip()
            if not _NUMBER.fullmatch(arg):
                raise UserError(
                    f"{label}: the weight {arg!r} in {tag} is not a number.", f"Write it as <lora:{name}:0.8>."
                )
            weights.append(float(arg))
        weight = weights[0] if weights else 1.0
        if len(weights) > 1 and weights[1] != weights[0]:
            parsed.notices.append(
                f"{label}: {tag} gives the text encoder and the UNet different weights; both use {weight:g}."
            )
        parsed.loras.append(LoraTag(name, weight, tag))
        return ""

    parsed.text = _NETWORK_TAG.sub(take, prompt)
    return parsed


def resolve_loras(
    tags: Iterable[LoraTag], folder: Path, find: Callable[[str, Path], Any] | None = None
) -> list[tuple[str, float]]:
    """(path, weight) of each tag's LoRA, found by name in `folder`; a name not there is a UserError naming both."""
    if find is None:
        from desktop_app.core.loras import find_lora

        find = find_lora
    out: list[tuple[str, float]] = []
    for tag in tags:
        try:
            path = find(tag.name, folder)
        except UserError:
            raise
        except (OSError, LookupError, ValueError):
            path = None
        if path is None:
            raise UserError(
                f"The prompt asks for the LoRA {tag.name!r} ({tag.text}), which is not in the LoRA folder {folder}.",
                "Put the LoRA file there, correct the name, or remove the tag.",
            )
        out.append((str(path), tag.weight))
    return out


def merge_loras(explicit: Sequence[tuple[str, float]], tagged: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The request's own LoRAs, then the prompt's; one per file (a tag's weight wins over the same file's)."""
    merged: dict[str, tuple[str, float]] = {}
    for path, weight in [*explicit, *tagged]:
        key = str(Path(path).expanduser().resolve())
        merged[key] = (path, float(weight))
    return list(merged.values())


# -- prompt editing [from:to:when] and alternation [a|b] -------------------------------
_SCHEDULE_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER "]"
alternate: "[" prompt ("|" prompt)+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
NUMBER: /[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
"""  # lark's common.SIGNED_NUMBER, written out: no grammar file to ship in the bundle


@lru_cache(maxsize=1)
def _schedule_parser():
    import lark

    return lark.Lark(_SCHEDULE_GRAMMAR)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] as A1111's get_learned_conditioning_prompt_schedules: step s (counted from 0, as
    A1111's denoiser counts) uses the first entry whose end_at_step >= s. `[a:b:when]`: a fraction of `steps` below 1,
    else a step; `[a|b]` alternates every step. A prompt the grammar cannot read is one entry, taken as it is."""
    import lark

    steps = max(1, int(steps))
    if not any(c in prompt for c in "[]|:"):
        return [(steps, prompt)]
    try:
        tree = _schedule_parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]

    def when(node) -> int:
        value = float(node.children[-1])
        if value < 1:
            value *= steps
        return min(steps, int(value))

    points = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            points.add(when(node))
        elif node.data == "alternate":
            points.update(range(1, steps + 1))

    def text_at(node, step: int) -> str:
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return text_at(before, step) if step <= when(node) else text_at(after, step)
        if node.data == "alternate":
            return text_at(node.children[(step - 1) % len(node.children)], step)
        return "".join(text_at(child, step) for child in node.children)

    return [(point, text_at(tree, point)) for point in sorted(points)]


def at_step(schedule: Sequence[tuple[int, Any]], step: int) -> Any:
    """The entry of a schedule that step `step` (from 0) uses: the first with end_at_step >= step (A1111's rule)."""
    for end, value in schedule:
        if step <= end:
            return value
    return schedule[0][1]  # A1111 falls back to the first entry


# -- emphasis: (word), (word:1.3), [word], \( escapes, BREAK ----------------------------
def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with A1111's emphasis rules: `(x)` x1.1, `[x]` /1.1, `(x:w)` xw, nested products, an
    unclosed bracket weights the rest of the prompt, `\\(` a literal bracket; BREAK is ("BREAK", -1)."""
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match[0], match[1]
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open and _as_float(weight) is not None:
            multiply(round_open.pop(), float(weight))
        elif weight is not None and round_open:  # ':1.2.3)': A1111 fails here; we keep the text and close the bracket
            res.append([token[:-1], 1.0])
            multiply(round_open.pop(), 1.1)
        elif token == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK, -1.0])
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    merged: list[list[Any]] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(str(t), float(w)) for t, w in merged]


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def syntax_notices(text: str, label: str = "Prompt") -> list[str]:
    """What A1111 would read differently from what the user likely meant: unbalanced brackets (an unclosed one
    weights the rest of the prompt), a weight that is not a number (kept as text)."""
    notices: list[str] = []
    for match in _LOOKS_WEIGHTED.finditer(text):
        raw = match[2]
        if _NUMBER.fullmatch(raw) and _as_float(raw) is not None:
            continue
        notices.append(
            f"{label}: in {match[0]!r} the weight {raw!r} is not a number: the text is taken literally, "
            f"weighted 1.1 as (text) is."
        )
    depth = {"(": 0, "[": 0}
    unmatched: dict[str, int] = {")": 0, "]": 0}
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
        elif char in "([":
            depth[char] += 1
        elif char in ")]":
            opener = "(" if char == ")" else "["
            if depth[opener]:
                depth[opener] -= 1
            else:
                unmatched[char] += 1
    for opener, count in depth.items():
        if count:
            factor = "1.1" if opener == "(" else "1/1.1"
            notices.append(
                f"{label}: {count} unclosed '{opener}': the text after it is weighted by {factor} to the end, as "
                f"AUTOMATIC1111 does."
            )
    for closer, count in unmatched.items():
        if count:
            notices.append(f"{label}: {count} '{closer}' without an opening bracket, taken as text.")
    return notices


# -- tokens in chunks of 75, as A1111's tokenize_line -----------------------------------
@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenEmbedding:
    """A textual-inversion word as one tokenizer sees it: the ids of its name, and the ids of its vectors."""

    name: str
    name_ids: tuple[int, ...]
    vector_ids: tuple[int, ...]


@dataclass
class Tokenized:
    chunks: list[list[int]]  # each: start + CHUNK tokens + end
    multipliers: list[list[float]]
    token_count: int
    used: set[str] = field(default_factory=set)  # textual-inversion names found
    truncated: int = 0  # tokens dropped beyond MAX_CHUNKS


def tokenize_weighted(
    tokenizer,
    parsed: Sequence[tuple[str, float]],
    embeddings: Sequence[TokenEmbedding] = (),
    chunk_length: int | None = None,
) -> Tokenized:
    """Token ids and weights of a parsed prompt in chunks, as A1111's tokenize_line: each part tokenized alone,
    chunks of `chunk_length` (75) framed by the start and end tokens and padded with end tokens, BREAK starts a new
    chunk, a chunk that fills up moves the text after a comma within COMMA_BACKTRACK tokens to the next one, and a
    textual-inversion word becomes its vectors' ids (never split across chunks)."""
    length = chunk_length or max(1, int(tokenizer.model_max_length) - 2)
    start, end = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    comma = tokenizer.get_vocab().get(",</w>")
    by_first: dict[int, list[TokenEmbedding]] = {}
    for emb in embeddings:
        if emb.name_ids:
            by_first.setdefault(emb.name_ids[0], []).append(emb)
    for options in by_first.values():
        options.sort(key=lambda e: len(e.name_ids), reverse=True)

    texts = [text for text, _ in parsed]
    ids = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []
    out = Tokenized([], [], 0)
    chunk = Chunk()
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, last_comma
        out.token_count += len(chunk.tokens) if is_last else length
        pad = length - len(chunk.tokens)
        if pad > 0:
            chunk.tokens += [end] * pad
            chunk.multipliers += [1.0] * pad
        out.chunks.append([start, *chunk.tokens, end])
        out.multipliers.append([1.0, *chunk.multipliers, 1.0])
        last_comma = -1
        chunk = Chunk()

    for tokens, (text, weight) in zip(ids, parsed):
        if text == BREAK and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                COMMA_BACKTRACK
                and len(chunk.tokens) == length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                moved, moved_w = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved, moved_w
            if len(chunk.tokens) == length:
                next_chunk()
            found = next(
                (
                    e
                    for e in by_first.get(token, ())
                    if tuple(tokens[position : position + len(e.name_ids)]) == e.name_ids
                ),
                None,
            )
            if found is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            if len(chunk.tokens) + len(found.vector_ids) > length:
                next_chunk()
            chunk.tokens += list(found.vector_ids)
            chunk.multipliers += [weight] * len(found.vector_ids)
            out.used.add(found.name)
            position += len(found.name_ids)
    if chunk.tokens or not out.chunks:
        next_chunk(is_last=True)
    if len(out.chunks) > MAX_CHUNKS:
        out.truncated = sum(
            sum(1 for t in c[1:-1] if t != end) for c in out.chunks[MAX_CHUNKS:]
        )  # the prompt's tokens past the limit
        out.chunks, out.multipliers = out.chunks[:MAX_CHUNKS], out.multipliers[:MAX_CHUNKS]
    return out


def request_lora_tags(request: Any) -> tuple[list[LoraTag], list[str]]:
    """The positive prompt's `<lora:...>` tags (A1111 applies those); tags in the negative (or an edit's source)
    prompt are taken out of the text but not applied, with a notice."""
    parsed = strip_network_tags(request.prompt, "Prompt")
    notices = list(parsed.notices)
    for label, text in (
        ("Negative prompt", request.negative_prompt),
        ("Source prompt", getattr(request, "source_prompt", "")),
    ):
        other = strip_network_tags(text or "", label)
        notices += other.notices
        if other.loras:
            names = ", ".join(tag.text for tag in other.loras)
            notices.append(f"{label}: {names} removed from the text and not applied; LoRA tags work in the prompt.")
    return parsed.loras, notices
