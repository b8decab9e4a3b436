"""The `diffusion-desk` command: no subcommand opens the GUI; generate / img2img / inpaint / outpaint / edit / history / models run headless."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from desktop_app import __version__
from desktop_app.core import paths
from desktop_app.core.errors import UserError
from desktop_app.core.requests import (
    ATTENTION_CONTROLS,
    DEFAULT_RESIZE_MODE,
    EDIT_METHODS,
    MASKED_CONTENT,
    OUTPAINT_FILLS,
    RESIZE_MODES,
    EditRequest,
)
from desktop_app.core.samplers import SCHEDULES, labels

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512, not {text!r}") from None
    return width, height


def _add_common(parser: argparse.ArgumentParser, *, needs_prompt: bool = True) -> None:
    parser.add_argument("--prompt", "-p", required=needs_prompt, default="", help="what the image should show")
    parser.add_argument("--negative", "-n", default="", help="what it should not show")
    parser.add_argument(
        "--model", "-m", default=None, help="'builtin' (default), a diffusers folder, a .safetensors file or a hub id"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "mps"), default=None, help="override the automatic device choice"
    )
    _add_performance(parser)
    parser.add_argument("--seed", type=int, default=None, help="random if left out; image i of a batch uses seed + i")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    parser.add_argument(
        "--guidance", "--cfg", type=float, default=None, help="classifier-free guidance scale (model default)"
    )
    parser.add_argument(
        "--size", type=_size, default=None, metavar="WxH", help="image size, multiples of 8 (model default)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images to make")
    parser.add_argument(
        "--sampler",
        "--scheduler",
        dest="scheduler",
        default=None,
        metavar="NAME",
        help="sampler as A1111, Forge or ComfyUI name it (model default): "
        + ", ".join(f'"{text}"' for _s, _sch, text in labels())
        + '; or ComfyUI\'s "dpmpp_2m", "euler_ancestral", "uni_pc", ... with --schedule',
    )
    parser.add_argument(
        "--schedule",
        default=None,
        metavar="TYPE",
        help="schedule type: " + ", ".join(s.lower() for s in SCHEDULES.values()) + " (the sampler's own)",
    )
    parser.add_argument(
        "--clip-skip", type=int, default=None, metavar="N", help="A1111's Clip skip: 2 skips the last CLIP layer"
    )
    parser.add_argument("--out", "-o", required=True, help="output PNG; a batch writes NAME.png, NAME-2.png, ...")
    parser.add_argument("--no-history", action="store_true", help="do not add the result to the history")
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="apply a LoRA (.safetensors) with a weight (default 1); repeatable",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .ckpt/.pt/.bin checkpoints and LoRAs: read with torch.load(weights_only=True), tensors only; pickles can hide code, so only from sources you trust",
    )
    from desktop_app.cli.backends import add_backend_arguments

    add_backend_arguments(parser)  # --backend comfyui=URL, repeatable


def _add_performance(parser: argparse.ArgumentParser) -> None:
    """Precision and the memory options of the local engine (the window's Run > Performance…)."""
    parser.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="precision of the weights: auto (on a GPU fp16, bf16 for SD 3 / FLUX.1 where it has it; fp32 on the CPU), bf16 (GPUs that have it; Flux's "
        "own), fp16 or fp32 (most exact, twice the memory)",
    )
    parser.add_argument(
        "--cpu-offload",
        action="store_true",
        help="model CPU offload (CUDA): only the part of the model that runs stays on the GPU; less memory, a "
        "little slower",
    )
    parser.add_argument(
        "--sequential-offload",
        action="store_true",
        help="sequential CPU offload (CUDA): the weights go to the GPU layer by layer; the least memory, much slower",
    )
    parser.add_argument(
        "--vae-tiling", action="store_true", help="decode and encode large images in tiles: less memory, same image"
    )
    parser.add_argument(
        "--attention-slicing",
        action="store_true",
        help="compute attention in slices: less memory, slower",
    )


def _add_edit_controls(parser: argparse.ArgumentParser) -> None:
    """The edit's method, its Prompt-to-Prompt attention control and its LEDITS++ concepts."""
    parser.add_argument(
        "--method",
        choices=EDIT_METHODS,
        default=None,
        help="how to edit (the model's recommended one if left out): on Stable Diffusion direct (direct "
        "inversion), negative-prompt, ddim (plain DDIM inversion) or ledits (LEDITS++, with --concept); on SD 3.x / "
        "Flux fireflow, rf-solver or rf-inversion (flow inversions), kontext on FLUX.1 Kontext (the prompt is the "
        "instruction)",
    )
    parser.add_argument(
        "--attention-control",
        choices=tuple(ATTENTION_CONTROLS),
        default=None,
        help="over ddim / negative-prompt / direct: p2p (Prompt-to-Prompt) keeps the source's attention maps so "
        "that only what the prompts change changes; off regenerates freely (model default if left out)",
    )
    parser.add_argument(
        "--cross-replace",
        type=_share,
        default=None,
        metavar="SHARE",
        help="with p2p: the share of the steps (0-1, or 80%%) that keep the source's cross-attention maps (model "
        "default, such as 0.8)",
    )
    parser.add_argument(
        "--self-replace",
        type=_share,
        default=None,
        metavar="SHARE",
        help="with p2p: the share of the steps (0-1, or 40%%) that inject the source's self-attention, which keeps "
        "its structure (model default, such as 0.4)",
    )
    parser.add_argument(
        "--local-blend",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with p2p: only where the changed words attend may the image change (model default if left out)",
    )
    parser.add_argument(
        "--reweight",
        default="",
        metavar="WORD:SCALE,...",
        help='with p2p: scale the attention to words of the prompt, such as "blue:2" (stronger) or "red:0.5"',
    )
    parser.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar='"+ TEXT @ GUIDANCE"',
        help='with --method ledits: an edit concept, "+ a blue hat @ 7" adds, "- a red scarf" removes, '
        '"@ 7 / 0.8" also sets the threshold of its implicit mask; repeatable',
    )


def _share(text: str) -> float:
    """A share of the steps: 0.8, or 80%."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a share of the steps such as 0.8 or 80%, not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share of the steps between 0 and 1 (0% and 100%), not {text!r}")
    return value


def _add_resize_mode(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resize-mode",
        choices=tuple(RESIZE_MODES),
        default=DEFAULT_RESIZE_MODE,
        help="how the source is fitted to a work size of another shape (--size): stretch it (just_resize, the "
        "default), scale it to cover and cut the overhang (crop_and_resize), or scale it to fit and fill the bands "
        "with its stretched edges (resize_and_fill); the result comes back at the source's size",
    )


def _add_mask_grow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mask-grow",
        type=_pixels,
        default=0,
        metavar="N",
        help="grow the mask outward by N pixels before the feather (default 0: every pixel outside the mask stays "
        "exactly the source's; a few pixels let the change spill over the mask's edge)",
    )


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of pixels, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a number of pixels, 0 or more, not {value}")
    return value


EXTEND_SIDES = ("left", "top", "right", "bottom")


def _extend(text: str) -> tuple[int, int, int, int]:
    """`left=64,top=32` (any of left, top, right, bottom, or all) as (left, top, right, bottom) pixels."""
    example = "left=64,top=32 (sides left, top, right, bottom or all; whole pixels)"
    sides = dict.fromkeys(EXTEND_SIDES, 0)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must look like {example}, not {text!r}")
    for part in parts:
        side, sep, value = (piece.strip().lower() for piece in part.partition("="))
        if not sep or (side not in sides and side != "all"):
            raise argparse.ArgumentTypeError(f"{part!r} is not SIDE=PIXELS: use {example}")
        try:
            pixels = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{side}={value!r} is not a whole number of pixels: use {example}"
            ) from None
        if pixels < 0:
            raise argparse.ArgumentTypeError(f"{side}={pixels}: pixels are 0 or more")
        for name in EXTEND_SIDES if side == "all" else (side,):
            sides[name] = pixels
    if not any(sides.values()):
        raise argparse.ArgumentTypeError(f"{text!r} adds no pixels: use {example}")
    return sides["left"], sides["top"], sides["right"], sides["bottom"]


def _masked_content(text: str) -> str:
    """A key of MASKED_CONTENT, also as A1111 writes it ("latent noise") or with a dash."""
    key = text.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in MASKED_CONTENT:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: " + ", ".join(MASKED_CONTENT))
    return key


def _add_masked_content(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--masked-content",
        type=_masked_content,
        default="original",
        metavar="MODE",
        help="what the masked area starts from (A1111's Masked content): original (default), fill (the "
        "surroundings' colours), latent_noise (noise: meant for strength 1), latent_nothing (zeros); fill and "
        "latent_nothing show only at a strength below 1",
    )


def _add_inpaint_options(parser: argparse.ArgumentParser, *, mask_required: bool, strength: float) -> None:
    """The options inpaint and outpaint share."""
    parser.add_argument("--image", "-i", required=True)
    parser.add_argument(
        "--mask",
        required=mask_required,
        default=None,
        help="white = change, black = keep" + ("" if mask_required else " (optional: also repaint this part)"),
    )
    parser.add_argument("--strength", type=float, default=strength)
    parser.add_argument("--mask-blur", type=int, default=4, help="feather in pixels, inside the mask")
    _add_mask_grow(parser)
    parser.add_argument(
        "--only-masked", action="store_true", help="work on the mask's area at model resolution and paste back"
    )
    parser.add_argument("--padding", type=int, default=32, help="context around the mask for --only-masked")
    _add_masked_content(parser)
    parser.add_argument(
        "--soft-mask",
        action="store_true",
        help="grey in the mask is a per-pixel strength (soft inpainting, differential diffusion); default: hard",
    )
    parser.add_argument(
        "--blend-band",
        type=_pixels,
        default=0,
        metavar="N",
        help="blend the result into the source over N px outside the mask (default 0: every pixel outside stays)",
    )
    parser.add_argument(
        "--color-match",
        action="store_true",
        help="match the generated area's colours to the source just outside the mask (hides a colour shift)",
    )
    _add_resize_mode(parser)


def _add_global(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"diffusion-desk {__version__}")
    parser.add_argument(
        "--data-dir", default=None, help=f"keep history, settings and logs here (or set {paths.DATA_DIR_ENV})"
    )
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    parser.add_argument(
        "--smoke", action="store_true", help="open the window offscreen, make one image with the built-in model, exit"
    )
    parser.add_argument("--gui-model", dest="gui_model", default=None, help=argparse.SUPPRESS)


USAGE = """%(prog)s [--data-dir DIR] [--debug] [FILE ...]      open the window (with these images)
       %(prog)s COMMAND [options]                           run headless: generate, img2img, inpaint, outpaint, edit, history, models"""


def build_gui_parser() -> argparse.ArgumentParser:
    """The window's command line, `diffusion-desk [FILE ...]`: what the desktop entry runs (`Exec=diffusion-desk %F`)."""
    parser = argparse.ArgumentParser(prog="diffusion-desk", usage=USAGE, description="Open the Diffusion Desk window.")
    _add_global(parser)
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="images to open (paths or file:// URLs); the first is shown"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The headless commands. A first word that is not a command is a file for the window (see `main`)."""
    parser = argparse.ArgumentParser(
        prog="diffusion-desk",
        usage=USAGE,
        description="Diffusion Desk: local text-to-image, inpainting and inversion editing. "
        "With no command (or with image files) it opens the window.",
        epilog="FILE: images to open in the window (paths or file:// URLs; the first is shown). When the window "
        "already runs, they go to it. A file named like a command: put -- before it.",
    )
    _add_global(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="diffusion-desk")

    gen = sub.add_parser("generate", help="text to image")
    _add_common(gen)

    i2i = sub.add_parser("img2img", help="image to image")
    _add_common(i2i)
    i2i.add_argument("--image", "-i", required=True)
    i2i.add_argument("--strength", type=float, default=0.6, help="0 keeps the image, 1 replaces it")
    _add_resize_mode(i2i)

    inp = sub.add_parser("inpaint", help="repaint the white part of a mask")
    _add_common(inp)
    _add_inpaint_options(inp, mask_required=True, strength=1.0)

    out = sub.add_parser(
        "outpaint",
        help="extend the image past its edges and generate the new area",
        description="Extend the canvas left, top, right or bottom and generate the new area (with a feathered "
        "overlap band into the image); the image's own pixels outside the band stay exactly as they were.",
    )
    _add_common(out)
    out.add_argument(
        "--extend",
        type=_extend,
        required=True,
        metavar="SIDE=PX,...",
        help="pixels to add: left=64,top=32 (sides left, top, right, bottom, or all=N); the canvas is rounded up "
        "to a multiple of 8 and may be at most 2048x2048",
    )
    out.add_argument(
        "--fill",
        choices=tuple(OUTPAINT_FILLS),
        default="edge",
        help="what fills the new area first: the edge pixels stretched (edge, the default), that stretch "
        "blurred (blur) or noise with the edge's colours (noise); shows at a strength below 1",
    )
    out.add_argument(
        "--overlap", type=_pixels, default=16, metavar="N", help="px of feathered overlap into the image (16)"
    )
    _add_inpaint_options(out, mask_required=False, strength=1.0)

    edit = sub.add_parser(
        "edit",
        help="edit a real image: inversion (with Prompt-to-Prompt attention control), LEDITS++, flow inversion, Kontext",
    )
    _add_common(edit, needs_prompt=False)  # LEDITS++ edits by --concept alone; every other method needs --prompt
    edit.add_argument("--image", "-i", required=True)
    edit.add_argument("--source-prompt", default="", help="what the image shows now")
    depth = edit.add_mutually_exclusive_group()
    depth.add_argument(
        "--t0", type=int, default=None, help="timestep to invert to (1-999): deeper allows bigger changes"
    )
    depth.add_argument("--strength", type=float, default=None, help="t0 as a fraction of the schedule")
    edit.add_argument("--mask", default=None, help="optional: only the white part may change")
    edit.add_argument("--mask-blur", type=int, default=4, help="with --mask: feather in pixels, inside the mask")
    _add_mask_grow(edit)
    _add_edit_controls(edit)
    _add_resize_mode(edit)

    try:
        from desktop_app.cli.history import add_history_parser

        add_history_parser(sub)
    except ImportError:
        pass

    from desktop_app.backend import PARTS

    models = sub.add_parser(
        "models", help="list models (built-in, used before, curated hub list); detect a checkpoint; download one"
    )
    models.add_argument("--json", action="store_true")
    models.add_argument(
        "--detect",
        metavar="FILE",
        default=None,
        help="say which family a .safetensors checkpoint is (reads its header only)",
    )
    models.add_argument(
        "--download",
        metavar="REPO",
        default=None,
        help="download a hub model (owner/name[@revision][:subfolder]) into the Hugging Face cache",
    )
    models.add_argument(
        "--download-parts",
        choices=sorted(PARTS),
        default=None,
        help="download only the text encoders, tokenizers and VAE a FLUX.1 or SD 3.x transformer file "
        "(flux1-dev-Q8_0.gguf, sd3.5_medium.safetensors) needs, into the Hugging Face cache where loading it finds "
        "them: "
        + "; ".join(
            f"{k}: {p.family_name}, about {p.size_gb:.1f} GB from {p.repo}{' (gated: log in first)' if p.gated else ''}"
            for k, p in sorted(PARTS.items())
        )
        + ". Not the transformer: the whole repos are 34 and 16 GB.",
    )
    models.add_argument(
        "--fp16",
        action="store_true",
        help="with --download: fetch the half-precision weights when the repo has them (GPUs)",
    )

    return parser


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    ]


def first_word(argv: Sequence[str], parser: argparse.ArgumentParser) -> str | None:
    """The first argument that is not an option or an option's value; None after `--` (files only from there)."""
    takes_value = {
        opt
        for action in parser._actions
        if action.option_strings and action.nargs != 0
        for opt in action.option_strings
    }
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if word.startswith("-") and word != "-":
            if "=" not in word and word in takes_value:
                next(words, None)
            continue
        return word
    return None


def local_path(arg: str, commands: Sequence[str] = ()) -> str:
    """A file argument as an absolute local path: a path, or a file:// URL (what %U and some file managers give).

    Raises UserError for a file that is not there, so a typo fails here and not in the window."""
    from urllib.parse import unquote, urlparse

    text = arg
    if "://" in arg:
        url = urlparse(arg)
        if url.scheme != "file" or url.netloc not in ("", "localhost"):
            raise UserError(
                f"Cannot open {arg}: only local files can be opened.", "Download it first, then open the file."
            )
        text = unquote(url.path)
    path = Path(text).expanduser().absolute()
    if not path.exists():
        if commands and "/" not in arg and "." not in arg:
            raise UserError(
                f"No such file or command: {arg}.",
                "The commands are " + ", ".join(commands) + "; see diffusion-desk --help.",
            )
        raise UserError(f"No such file: {arg}.", "Check the path; a file name with spaces needs quotes.")
    if path.is_dir():
        raise UserError(f"{arg} is a folder, not an image.", "Give the path of an image file.")
    return str(path)


def _lora_spec(text: str):
    from desktop_app.engine.lora import LoraSpec

    return LoraSpec.parse(text)


def _request_from_args(args: argparse.Namespace):
    from desktop_app.core.images import load_image, load_mask
    from desktop_app.core.requests import (
        EditRequest,
        GenerateRequest,
        Img2ImgRequest,
        InpaintRequest,
        parse_edit_concepts,
    )
    from desktop_app.core.samplers import parse_sampler, parse_schedule

    if args.scheduler is not None:
        sampler, schedule = parse_sampler(args.scheduler, args.schedule)
    else:
        sampler, schedule = None, parse_schedule(args.schedule)
    common: dict[str, Any] = dict(
        prompt=args.prompt,
        negative_prompt=args.negative,
        model=args.model or "builtin",
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch=args.batch,
        scheduler=sampler,
        schedule=schedule,
        clip_skip=args.clip_skip,
        trajectory=False,
        loras=tuple((str(Path(spec.path).expanduser().resolve()), spec.weight) for spec in map(_lora_spec, args.lora)),
    )
    if args.size:
        common["width"], common["height"] = args.size
    if args.command == "generate":
        return GenerateRequest(**common)
    image = load_image(args.image)
    if args.command == "img2img":
        return Img2ImgRequest(**common, image=image, strength=args.strength, resize_mode=args.resize_mode)
    if args.command in ("inpaint", "outpaint"):
        outpaint: dict[str, Any] = {}
        if args.command == "outpaint":
            outpaint = dict(extend=args.extend, outpaint_fill=args.fill, outpaint_overlap=args.overlap)
        return InpaintRequest(
            **common,
            image=image,
            mask=load_mask(args.mask) if args.mask else None,
            strength=args.strength,
            mask_blur=args.mask_blur,
            mask_grow=args.mask_grow,
            only_masked=args.only_masked,
            only_masked_padding=args.padding,
            resize_mode=args.resize_mode,
            masked_content=args.masked_content,
            soft_mask=args.soft_mask,
            blend_band=args.blend_band,
            color_match=args.color_match,
            **outpaint,
        )
    if not args.prompt.strip() and args.method != "ledits":
        raise UserError(
            "An edit needs --prompt: what the image should show (or, with --method kontext, what to change).",
            'Add --prompt, or use --method ledits with --concept "+ TEXT" to edit by concepts alone.',
        )
    extra: dict[str, Any] = dict(
        source_prompt=args.source_prompt,
        t0=args.t0,
        strength=args.strength,
        mask_blur=args.mask_blur,
        mask_grow=args.mask_grow,
        resize_mode=args.resize_mode,
    )
    if args.method:
        extra["method"] = args.method
    extra.update(
        attention_control=args.attention_control,
        cross_replace=args.cross_replace,
        self_replace=args.self_replace,
        local_blend=args.local_blend,
        reweight=args.reweight.strip(),
        edit_concepts=tuple(concept for text in args.concept for concept in parse_edit_concepts(text)),
    )
    if args.mask:
        extra["mask"] = load_mask(args.mask)
    return EditRequest(**common, image=image, **extra)


def output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    return [path] + [path.with_name(f"{path.stem}-{i + 1}{path.suffix}") for i in range(1, count)]


def save_result(result, out: str) -> list[Path]:
    """Write each image with its parameters (AUTOMATIC1111 text + our JSON); atomic per file."""
    from desktop_app.core.images import save_png
    from desktop_app.core.infotext import png_info

    written = []
    for index, (image, path) in enumerate(zip(result.images, output_paths(out, len(result.images)))):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(image, path, png_info(result, index))
        except OSError as exc:
            error = UserError(
                f"Cannot write {path}: {paths.why(exc)}.", "Check the folder exists, is writable and has free space."
            )
            error.written = written  # type: ignore[attr-defined]
            raise error from exc
        written.append(path)
    return written


def _rescue(result) -> list[Path]:
    """Where a result goes when --out cannot be written and the history does not have it: the temp folder."""
    import tempfile

    stem = Path(tempfile.gettempdir()) / f"diffusion-desk-{time.strftime('%Y%m%d-%H%M%S')}.png"
    try:
        return save_result(result, str(stem))
    except UserError:
        return []


def _run_job(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from desktop_app.core.events import Notice, Progress

    request = _request_from_args(args)
    source, notes = _edit_source(args, request)
    if isinstance(request, EditRequest) and source is not None and not request.source_prompt.strip():
        request = request.replace(source_prompt=source.prompt)  # the picture says what it shows
    request.validate()
    from desktop_app.cli.backends import backend_from_args
    from desktop_app.engine.engine import Engine, JobCancelled

    # --backend comfyui=URL sends the job to ComfyUI servers; without it, the local engine runs it
    engine = backend_from_args(args, lambda: Engine(**engine_kwargs(args), allow_pickle=args.allow_pickle))
    bars: dict[str, tqdm] = {}
    on_terminal = _is_terminal(sys.stderr)  # redirected output gets one line per job, not a bar's redraws
    last: dict[str, Any] = {}
    started = time.monotonic()

    def on_event(event) -> None:
        if isinstance(event, Progress) and not on_terminal:
            last[event.phase] = event
        elif isinstance(event, Progress):
            bar = bars.get(event.phase)
            if bar is None:
                download = event.phase == "download"
                bar = bars[event.phase] = tqdm(
                    total=event.total,
                    desc=event.phase,
                    unit="B" if download else "step",
                    unit_scale=download,
                    file=sys.stderr,
                    leave=True,
                )
            bar.update(event.step - bar.n)
            if event.phase != "download":
                bar.set_postfix_str(f"t={event.timestep}")
        elif isinstance(event, Notice):
            if on_terminal:
                tqdm.write(f"note: {event.message}", file=sys.stderr)
            else:
                print(f"note: {event.message}", file=sys.stderr)

    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        result = engine.run(request, on_event, source=source)
    except JobCancelled:
        return EXIT_CANCELLED
    finally:
        for bar in bars.values():
            bar.close()
    if not on_terminal:
        print(_job_line(request, result, last, time.monotonic() - started), file=sys.stderr, flush=True)
    # The history first: when --out cannot be written, the result is still kept (and we can say where).
    kept = [] if args.no_history else _add_to_history(result)
    try:
        written = save_result(result, args.out)
    except UserError as exc:
        done = [str(p) for p in getattr(exc, "written", [])]
        safe = [str(entry.image_path) for entry in kept] or [str(p) for p in _rescue(result)]
        where = (
            ("It is in the history: " if kept else "It was saved to ") + ", ".join(safe)
            if safe
            else "It could not be saved anywhere"
        )
        raise UserError(
            f"{exc.message} {where}." + (f" Written before the failure: {', '.join(done)}." if done else ""),
            "Copy it from there, or choose a writable --out.",
        ) from exc
    for path in written:
        print(path)
    return 0


def _edit_source(args: argparse.Namespace, request) -> tuple[Any, list[str]]:
    """The request that made an edit's source image, when the PNG is one of ours (its JSON chunk): the engine then
    replays that run's trajectory instead of inverting (exact reconstruction, as in the window), and an edit without
    --source-prompt takes the prompt the picture was made from. (None, []) for any other picture or kind of job."""
    if not isinstance(request, EditRequest) or not str(args.image).lower().endswith(".png"):
        return None, []
    from desktop_app.core.infotext import read_png_metadata
    from desktop_app.core.metadata import MetadataError

    try:
        info = read_png_metadata(args.image)
    except (MetadataError, OSError):
        return None, []
    made = info.request
    if info.source != "diffusion_desk" or made is None or made.kind != "generate" or made.seed is None:
        return None, []
    notes = []
    if not request.source_prompt.strip():
        notes.append(f"Source prompt from the picture's parameters: {made.prompt!r}.")
    return made, notes


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The local engine's device, precision and memory options from the command line (imports torch; not Qt, as
    the window's worker.EngineOptions would)."""
    from desktop_app.engine.device import MemoryOptions

    return {
        "device": args.device,
        "dtype": None if args.dtype == "auto" else args.dtype,
        "memory": MemoryOptions(
            attention_slicing=args.attention_slicing,
            vae_tiling=args.vae_tiling,
            cpu_offload=args.cpu_offload,
            sequential_offload=args.sequential_offload,
        ),
    }


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or odd stream: no bars
        return False


def _job_line(request, result, last: dict[str, Any], seconds: float) -> str:
    """The one line a redirected job writes: what it made, in how many steps and how long."""
    count = len(result.images)
    phases = [(phase, event) for phase, event in last.items() if phase != "download"]
    if len(phases) > 1:  # one count over the phases (an edit: invert, then denoise): say each phase's share
        shares, before = [], 0
        for phase, event in phases:
            shares.append(f"{phase} {event.step - before}")
            before = event.step
        detail = f" ({' + '.join(shares)} = {phases[-1][1].step}/{phases[-1][1].total} steps)"
    else:
        detail = "".join(f" ({phase} {event.step}/{event.total})" for phase, event in phases)
    return f"{request.kind}: {count} image{'s' if count != 1 else ''}{detail} in {seconds:.1f} s"


def _add_to_history(result) -> list[Any]:
    """The result's history entries ([] when the history is not installed or cannot be written: a warning)."""
    try:
        from desktop_app.core.history import HistoryStore
    except ImportError:
        return []
    try:
        store = HistoryStore()
        try:
            return list(store.add(result))
        finally:
            store.close()
    except UserError as exc:
        print(f"warning: not saved to the history: {exc}", file=sys.stderr)
        return []


def _list_models(args: argparse.Namespace) -> int:
    from desktop_app.core.model_registry import list_rows
    from desktop_app.core.modelinfo import BUILTIN, builtin_model_path, model_defaults

    if args.detect:
        from desktop_app.engine.checkpoints import detect_file
        from desktop_app.engine.flow_files import inspect_flow_file

        flow = inspect_flow_file(args.detect)  # SD 3.x / FLUX.1 transformers first (.safetensors, .gguf)
        if flow is not None:
            if args.json:
                print(
                    json.dumps(
                        {
                            "family": flow.family,
                            "name": flow.name,
                            "prediction_type": "flow",
                            "evidence": list(flow.evidence),
                            "text_encoders": list(flow.text_encoders),
                            "has_vae": flow.has_vae,
                        },
                        indent=2,
                    )
                )
            else:
                print(f"{flow.family}\t{flow.name}\t{'; '.join(flow.evidence)}")
            return 0
        found = detect_file(args.detect)
        if args.json:
            print(
                json.dumps(
                    {
                        "family": found.family,
                        "name": found.name,
                        "prediction_type": found.prediction_type,
                        "evidence": list(found.evidence),
                    },
                    indent=2,
                )
            )
        else:
            print(f"{found.family}\t{found.name}\t{'; '.join(found.evidence)}")
        return 0
    if args.download:
        from desktop_app.engine.hub import download_with_console_progress

        print(download_with_console_progress(args.download, prefer_fp16=args.fp16))
        return 0
    if args.download_parts:
        from desktop_app.backend import PARTS
        from desktop_app.engine.flow_files import parts_repo
        from desktop_app.engine.hub import download_with_console_progress

        repo, names = parts_repo(PARTS[args.download_parts].family)
        print(f"{PARTS[args.download_parts].label} ({', '.join(names)}) from {repo}", file=sys.stderr)
        print(download_with_console_progress(repo, only=names))
        return 0
    rows = [{"id": BUILTIN, "path": str(builtin_model_path()), **model_defaults(BUILTIN)}]
    known = list_rows()
    if args.json:
        print(json.dumps(rows + known, indent=2))
    else:
        for row in rows:
            print(
                f"{row['id']}\t{row.get('name', '')}\t{row['width']}x{row['height']}, {row['steps']} steps, CFG {row['guidance']}\t{row['path']}"
            )
        for row in known:
            size = (
                f"{row['download_gb']:.1f} GB download"
                if "download_gb" in row
                else ("MISSING" if row.get("missing") else row.get("hash", ""))
            )
            print(f"{row['id']}\t{row['name']}\t{row['kind']}, {row['family']}\t{size}")
    return 0


def _say_read_only(args: argparse.Namespace, log_file: Path | None) -> None:
    """One stderr line when a data folder cannot be written (and what goes without it); in the log file too."""
    notice = paths.read_only_notice(history=args.command not in ("history", "models"))
    if notice:
        print(f"warning: {notice}", file=sys.stderr)
        if log_file is not None:
            import logging

            logging.getLogger(__name__).warning("%s", notice)


def main(argv: Sequence[str] | None = None) -> int:
    """`diffusion-desk COMMAND ...` runs a command; anything else (no arguments, files, URLs) opens the window."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = command_names(parser)
    word = first_word(argv, parser)
    if word in commands or (word is None and "--" not in argv and {"-h", "--help"} & set(argv)):
        args = parser.parse_args(argv)  # a command, or --help: the full help, commands included
    else:
        args = build_gui_parser().parse_args(argv)
        args.command = None
    if args.data_dir:
        paths.set_data_dir(args.data_dir)
    from desktop_app.app.logs import setup_logging

    log_file = setup_logging(args.debug)
    try:
        if args.command is not None or args.smoke:  # the window says it in its banner (run_gui)
            _say_read_only(args, log_file)
        if args.smoke:
            from desktop_app.app.smoke import run_smoke

            return run_smoke(model=args.gui_model)
        if args.command in ("generate", "img2img", "inpaint", "outpaint", "edit"):
            return _run_job(args)
        if args.command == "history":
            from desktop_app.cli.history import run_history

            return run_history(args)
        if args.command == "models":
            return _list_models(args)
        files = [local_path(arg, () if "--" in argv else commands) for arg in args.files]
        from desktop_app.app.application import run_gui

        return run_gui(model=args.gui_model, data_dir=args.data_dir, files=files, debug=args.debug)
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_CANCELLED
