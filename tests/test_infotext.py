"""AUTOMATIC1111-compatible infotext: format, parse, PNG chunks, and parsing hostile input cleanly."""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_history_support import edit_result, generate_result, inpaint_result

from desktop_app.core.errors import UserError
from desktop_app.core.infotext import (
    A1111_PARAM_RE,
    MetadataError,
    _parameters_to_request,
    build_png_info,
    format_parameters,
    model_name,
    param_pairs,
    parameters_to_request,
    parse_parameters,
    png_info,
    quote,
    read_png_metadata,
    unquote,
)
from desktop_app.core.requests import EditRequest, GenerateRequest

A1111_SAMPLE = (
    "masterpiece, best quality, 1girl, (smile:1.2)\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Hires upscale: 2, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0'
)


def png_bytes(chunks: dict[str, str] | None = None, zip_: bool = False) -> bytes:
    info = PngInfo()
    for key, value in (chunks or {}).items():
        info.add_text(key, value, zip=zip_)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# -- format -----------------------------------------------------------------------


def test_format_generate_matches_a1111_layout():
    request = GenerateRequest(
        prompt="a red cube",
        negative_prompt="blurry",
        steps=20,
        guidance=7.0,
        width=512,
        height=512,
        seed=1,
        scheduler="dpmpp_2m",
    )
    text = format_parameters(request, seed=965400086, model_id="builtin", model_hash="1a2b3c4d5e")
    lines = text.split("\n")
    assert lines[0] == "a red cube"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 1a2b3c4d5e, Model: builtin"
    )
    assert "Mode: generate" in lines[2]


def test_format_omits_empty_negative_prompt_and_quotes_values():
    request = EditRequest(
        prompt="cat",
        source_prompt='a dog, sitting: "good"\nboy',
        t0=600,
        steps=10,
        guidance=5.5,
        width=64,
        height=64,
        method="direct",
        strength=0.75,
    )
    text = format_parameters(request, seed=3, model_id="C:\\models\\x.safetensors", model_hash="ff")
    assert "Negative prompt" not in text
    assert len(text.split("\n")) == 2
    last = text.split("\n")[1]
    assert 'Source prompt: "a dog, sitting: \\"good\\"\\nboy"' in last
    assert "Model: x," in last  # as A1111 writes it: the file name without folder and extension
    assert "T0: 600" in last and "Edit method: direct" in last and "Denoising strength: 0.75" in last
    params = parse_parameters(text)
    assert params["Source prompt"] == 'a dog, sitting: "good"\nboy'
    assert params["Model"] == "x"
    assert params["Mode"] == "edit"


def test_quote_unquote():
    for value in ["plain", "a, b", "a: b", "line\nbreak", '"quoted"', " padded ", 'x"y', "ünïcødé, ✓"]:
        assert unquote(quote(value)) == value
    assert quote("plain") == "plain"


def test_png_info_per_image_seed_and_extra():
    result = generate_result(n=3, seed=10, info={"Token merging ratio": 0.5, "Per image": [1, 2, 3]})
    for index in range(3):
        info = png_info(result, index)
        buf = io.BytesIO()
        result.images[index].save(buf, format="PNG", pnginfo=info)
        parsed = read_png_metadata(buf.getvalue())
        assert parsed.source == "diffusion_desk"
        assert parsed.seed == 10 + index
        assert parsed.request is not None
        assert parsed.request.seed == 10 + index and parsed.request.batch == 1
        assert parsed.parameters["Seed"] == str(10 + index)
        assert parsed.parameters["Token merging ratio"] == "0.5"
        assert parsed.parameters["Per image"] == str(index + 1)


# -- parse --------------------------------------------------------------------------


def test_parse_real_a1111_text():
    params = parse_parameters(A1111_SAMPLE)
    assert params["Prompt"] == "masterpiece, best quality, 1girl, (smile:1.2)"
    assert params["Negative prompt"] == "lowres, bad anatomy"
    assert params["Steps"] == "28"
    assert params["Sampler"] == "DPM++ 2M Karras"
    assert params["Size-1"] == "512" and params["Size-2"] == "768"
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert params["Version"] == "v1.6.0"


def test_last_line_needs_three_pairs():
    params = parse_parameters("a photo\nstyle: film, grain: fine")
    assert params["Prompt"] == "a photo\nstyle: film, grain: fine"
    assert "style" not in params


def test_multiline_prompt_and_negative():
    text = "line one\nline two\nNegative prompt: bad\nworse\nSteps: 5, Seed: 1, CFG scale: 3"
    params = parse_parameters(text)
    assert params["Prompt"] == "line one\nline two"
    assert params["Negative prompt"] == "bad\nworse"
    assert params["Steps"] == "5"


def test_read_a1111_png_and_request():
    parsed = read_png_metadata(png_bytes({"parameters": A1111_SAMPLE}))
    assert parsed.source == "a1111"
    assert parsed.prompt.startswith("masterpiece")
    assert parsed.seed == 965400086
    assert parsed.request is not None
    assert parsed.request.steps == 28 and parsed.request.width == 512 and parsed.request.height == 768
    assert parsed.request.guidance == 7.0


def test_read_invokeai_png():
    meta = {
        "positive_prompt": "a lighthouse at dusk",
        "negative_prompt": "people",
        "seed": 42,
        "steps": 30,
        "cfg_scale": 7.5,
        "width": 512,
        "height": 640,
        "model": {"name": "sd-1.5", "base": "sd-1"},
        "scheduler": "euler",
    }
    parsed = read_png_metadata(png_bytes({"invokeai_metadata": json.dumps(meta)}))
    assert parsed.source == "invokeai"
    assert parsed.prompt == "a lighthouse at dusk" and parsed.negative_prompt == "people"
    assert parsed.seed == 42 and parsed.model_id == "sd-1.5"
    assert parsed.request is not None
    assert parsed.request.height == 640


def test_ours_wins_over_parameters(tmp_path):
    result = edit_result()
    path = tmp_path / "x.png"
    result.images[0].save(path, pnginfo=png_info(result, 0))
    parsed = read_png_metadata(path)
    assert parsed.source == "diffusion_desk"
    assert isinstance(parsed.request, EditRequest)
    assert parsed.request.source_prompt == "a green cube, on: wood"
    assert parsed.request.t0 == 600 and parsed.request.image is None
    assert parsed.parameters["Mode"] == "edit"
    # inpaint too
    result = inpaint_result()
    result.images[0].save(path, pnginfo=png_info(result, 0))
    request = read_png_metadata(path).request
    assert request is not None and request.kind == "inpaint"


def test_broken_ours_falls_back_to_parameters():
    parsed = read_png_metadata(png_bytes({"diffusion_desk": "{not json", "parameters": A1111_SAMPLE}))
    assert parsed.source == "a1111"


def test_no_metadata_and_not_an_image(tmp_path):
    with pytest.raises(MetadataError):
        read_png_metadata(png_bytes())
    with pytest.raises(MetadataError):
        read_png_metadata(b"definitely not a png")
    with pytest.raises(MetadataError):
        read_png_metadata(tmp_path / "nope.png")
    with pytest.raises(MetadataError):
        read_png_metadata(png_bytes({"diffusion_desk": json.dumps({"request": {"kind": "teleport"}})}))
    # Fields of the wrong type are left out with a notice; the rest of the request is still read.
    info = read_png_metadata(png_bytes({"diffusion_desk": json.dumps({"request": {"prompt": 5, "steps": "x"}})}))
    assert info.request is not None and info.request.prompt == "" and info.request.steps is None
    assert info.notices == ["Prompt 5 is not text: left out", "Steps 'x' is not a number: left out"]


def test_huge_chunks_are_clean_errors():
    with pytest.raises(MetadataError, match="too large"):
        read_png_metadata(png_bytes({"parameters": "a, " * 200_000}))
    with pytest.raises(MetadataError):  # past Pillow's 1 MB chunk limit, compressed to almost nothing
        read_png_metadata(png_bytes({"parameters": "x" * 3_000_000}, zip_=True))
    assert issubclass(MetadataError, UserError)


def test_long_line_without_colons_is_fast():
    import time

    start = time.perf_counter()
    parse_parameters("prompt\n" + "a" * 200_000)
    parse_parameters("prompt\n" + "ab " * 80_000)
    assert time.perf_counter() - start < 1.0


def test_text_after_image_data_is_read():
    """Some tools write text chunks after IDAT."""
    raw = png_bytes()
    chunk_data = b"parameters\x00" + A1111_SAMPLE.encode("latin-1")
    chunk = struct.pack(">I", len(chunk_data)) + b"tEXt" + chunk_data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + chunk_data) & 0xFFFFFFFF)
    iend = raw.rindex(b"IEND") - 4
    data = raw[:iend] + chunk + raw[iend:]
    assert read_png_metadata(data).seed == 965400086


# -- fuzz -------------------------------------------------------------------------------

_PARAM_ALPHABET = st.sampled_from(list('ab1 :,"\\-/_\tx\u00e9\u2028'))
_line = st.text(alphabet=_PARAM_ALPHABET, max_size=40) | st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(_line.filter(lambda s: "\n" not in s))
def test_param_pairs_equal_a1111_regex(line):
    assert param_pairs(line) == A1111_PARAM_RE.findall(line)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet=_PARAM_ALPHABET | st.just("\n"), max_size=300))
def test_parse_parameters_never_raises_other_errors(text):
    try:
        params = parse_parameters(text)
    except MetadataError:
        return
    assert isinstance(params["Prompt"], str) and isinstance(params["Negative prompt"], str)


_prompt_line = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(lambda s: s and not s.startswith("Negative prompt:"))
)
_prompt = st.lists(_prompt_line, min_size=1, max_size=3).map("\n".join)
_anything = st.text(max_size=40)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_prompt, st.one_of(st.just(""), _prompt), _anything, _anything, st.integers(0, 2**32 - 1))
def test_round_trip_a1111_and_ours(prompt, negative, source_prompt, model_id, seed):
    request = EditRequest(
        prompt=prompt,
        negative_prompt=negative,
        source_prompt=source_prompt,
        t0=500,
        steps=12,
        guidance=6.5,
        width=64,
        height=64,
        seed=seed,
        method="ddim",
        strength=0.8,
    )
    text = format_parameters(request, seed=seed, model_id=model_id, model_hash="abc")
    params = parse_parameters(text)
    assert params["Prompt"] == prompt
    assert params["Negative prompt"] == negative
    assert params["Seed"] == str(seed)
    assert params.get("Source prompt", "") == source_prompt
    assert params["Steps"] == "12" and params["CFG scale"] == "6.5" and params["T0"] == "500"
    if model_id:
        assert params["Model"] == model_name(model_id)
    # our chunk replays exactly
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=build_png_info(request, seed, model_id, "abc"))
    parsed = read_png_metadata(buf.getvalue())
    assert parsed.request == request.replace(batch=1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["parameters", "diffusion_desk", "invokeai_metadata", "sd-metadata"]),
    st.one_of(
        st.text(max_size=500),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
            ),
            max_leaves=20,
        ).map(json.dumps),
        st.fixed_dictionaries(
            {
                "request": st.dictionaries(
                    st.sampled_from(["kind", "prompt", "steps", "seed", "width", "image", "t0"]),
                    st.none() | st.integers() | st.text(max_size=10) | st.floats(),
                    max_size=5,
                )
            }
        ).map(json.dumps),
    ),
    st.booleans(),
)
def test_read_png_metadata_only_raises_metadata_error(key, value, zip_):
    try:
        info = PngInfo()
        info.add_text(key, value, zip=zip_)
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    except Exception:  # noqa: BLE001 - values Pillow itself refuses to write are not our concern
        return
    try:
        read_png_metadata(buf.getvalue())
    except MetadataError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400))
def test_read_png_metadata_on_damaged_bytes(junk, position):
    data = bytearray(png_bytes({"parameters": A1111_SAMPLE}, zip_=True))
    position = min(position, len(data))
    data[position : position + len(junk)] = junk
    try:
        read_png_metadata(bytes(data))
    except MetadataError:
        pass


def test_format_parameters_of_a_result():
    result = generate_result(n=2, seed=31)
    # format_parameters documents a Result as well; its annotation names only the request
    text = format_parameters(result)  # pyright: ignore[reportArgumentType]
    assert text == format_parameters(result.request, 31, "builtin", "0123456789", {}, (64, 64))


def test_one_image_saved_from_two_threads_keeps_each_files_own_text(tmp_path):
    """The history writer and the user's Save can write the same result at once; neither loses its chunks."""
    import threading

    from PIL import Image
    from PIL.PngImagePlugin import PngImageFile, PngInfo

    from desktop_app.core.images import save_png

    image = Image.new("RGB", (32, 32), (1, 2, 3))
    failures = []

    def writer(name):
        for i in range(150):
            info = PngInfo()
            info.add_text("parameters", f"{name} {i}")
            path = tmp_path / f"{name}.png"
            save_png(image, path, info)
            with Image.open(path) as written:
                text = written.text if isinstance(written, PngImageFile) else {}
            if text.get("parameters") != f"{name} {i}":
                failures.append((name, i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert not list(tmp_path.glob(".*.tmp"))


# -- resize mode and mask grow (defects 9 and 12) ------------------------------------


def _field(request, name: str):
    """A field only some request kinds have (pyright knows the base class)."""
    return getattr(request, name)


def _saved(result, index: int = 0) -> bytes:
    buf = io.BytesIO()
    result.images[index].save(buf, format="PNG", pnginfo=png_info(result, index))
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, resize_mode, mask_grow, label",
    [
        ("inpaint", "crop_and_resize", 6, "Crop and resize"),
        ("inpaint", "resize_and_fill", 0, "Resize and fill"),
        ("edit", "resize_and_fill", 12, "Resize and fill"),
        ("img2img", "crop_and_resize", None, "Crop and resize"),
    ],
)
def test_resize_mode_and_mask_grow_round_trip_through_the_parameters_text(kind, resize_mode, mask_grow, label):
    from dataclasses import replace

    from desktop_app.core.requests import Img2ImgRequest

    if kind == "inpaint":
        base = inpaint_result()
    elif kind == "edit":
        base = edit_result()
    else:
        base = generate_result()
        base = replace(base, request=Img2ImgRequest(prompt="x", image=base.images[0], steps=4, seed=1))
    changes = {"resize_mode": resize_mode, **({"mask_grow": mask_grow} if mask_grow is not None else {})}
    request = base.request.replace(**changes)
    # what the engine puts into Result.info: the mode's name when it is not the default, the grow when not 0
    info = {"Resize mode": label, **({"Mask grow": mask_grow} if mask_grow else {})}
    result = replace(base, request=request, info=info)
    text = format_parameters(result)
    last = text.splitlines()[-1]
    assert f"Resize mode: {label}" in last and last.count("Resize mode:") == 1
    assert ("Mask grow: " in last) == bool(mask_grow) and last.count("Mask grow:") <= 1
    if mask_grow:
        assert f"Mask grow: {mask_grow}," in last
    pairs = dict(A1111_PARAM_RE.findall(last))  # AUTOMATIC1111's own parser reads the line as before
    assert pairs["Resize mode"] == label and pairs["Steps"] == str(request.steps)
    # back from the A1111 text alone (as another tool's image would be read) and from our chunk
    params = parse_parameters(text)
    again = parameters_to_request(params)
    assert again.kind == kind
    assert _field(again, "resize_mode") == resize_mode
    if mask_grow is not None:
        assert _field(again, "mask_grow") == mask_grow
    ours = read_png_metadata(_saved(result))
    assert ours.source == "diffusion_desk" and ours.request is not None
    assert _field(ours.request, "resize_mode") == resize_mode
    assert ours.parameters["Resize mode"] == label
    a1111 = read_png_metadata(png_bytes({"parameters": text}))  # the text chunk alone
    assert a1111.source == "a1111" and _field(a1111.request, "resize_mode") == resize_mode


def test_defaults_write_no_resize_mode_or_mask_grow_and_read_back_as_defaults():
    result = inpaint_result()
    last = format_parameters(result).splitlines()[-1]
    assert "Resize mode" not in last and "Mask grow" not in last  # just resize, mask as painted: nothing to say
    again = parameters_to_request(parse_parameters(format_parameters(result)))
    assert _field(again, "resize_mode") == "just_resize" and _field(again, "mask_grow") == 0


def test_a1111_resize_mode_names_and_unknown_ones():
    base = "x\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, Mode: img2img, Denoising strength: 0.5"
    for text, want in (
        ("Resize mode: Crop and resize", "crop_and_resize"),
        ("Resize mode: resize_and_fill", "resize_and_fill"),
        ('Resize mode: "Just resize (latent upscale)"', "just_resize"),  # A1111's fourth: not ours, the default
        ("Mask grow: -3", "just_resize"),
    ):
        request = parameters_to_request(parse_parameters(f"{base}, {text}"))
        assert _field(request, "resize_mode") == want, text
    inpaint = "x\nSteps: 20, Seed: 1, Size: 64x64, Mode: inpaint, Mask blur: 4"
    assert _field(parameters_to_request(parse_parameters(inpaint + ", Mask grow: 9")), "mask_grow") == 9
    assert _field(parameters_to_request(parse_parameters(inpaint + ", Mask grow: -3")), "mask_grow") == 0


# -- samplers, schedules, clip skip, model names, LoRA / TI hashes, one T0 ---------------------------------------
@pytest.mark.parametrize(
    ("sampler", "schedule", "written"),
    [
        ("dpmpp_2m", "karras", "Sampler: DPM++ 2M, Schedule type: Karras,"),
        ("euler_a", None, "Sampler: Euler a, CFG scale"),
        ("dpmpp_2m_sde", "exponential", "Sampler: DPM++ 2M SDE, Schedule type: Exponential,"),
        ("unipc", "normal", "Sampler: UniPC, Schedule type: Normal,"),
    ],
)
def test_sampler_and_schedule_written_as_a1111_and_read_back(sampler, schedule, written):
    request = GenerateRequest(prompt="x", steps=4, guidance=7, seed=1, scheduler=sampler, schedule=schedule)
    text = format_parameters(request, model_id="m")
    assert written in text
    back = parameters_to_request(parse_parameters(text))
    assert (back.scheduler, back.schedule) == (sampler, schedule)


@pytest.mark.parametrize(
    ("sampler_line", "expected", "notice"),
    [
        ("Sampler: DPM++ 2M Karras", ("dpmpp_2m", "karras"), None),  # A1111 before 1.9
        ("Sampler: DPM++ SDE, Schedule type: Automatic", ("dpmpp_sde", None), None),
        ("Sampler: Euler a, Schedule type: Karras", ("euler_a", None), "does not suit"),
        ("Sampler: Heun, Schedule type: Karras", (None, None), "Heun"),
    ],
)
def test_a1111_sampler_names_read(sampler_line, expected, notice):
    text = f"a cat\nSteps: 20, {sampler_line}, CFG scale: 7, Seed: 1, Size: 512x512"
    request, notices = _parameters_to_request(parse_parameters(text))
    assert (request.scheduler, request.schedule) == expected
    assert (notice is None) == (not notices) and all(notice in n for n in notices)


def test_clip_skip_written_only_when_it_skips():
    two = format_parameters(GenerateRequest(prompt="x", steps=2, clip_skip=2), model_id="m")
    assert "Clip skip: 2" in two and parameters_to_request(parse_parameters(two)).clip_skip == 2
    for clip_skip in (None, 1):
        assert "Clip skip" not in format_parameters(GenerateRequest(prompt="x", steps=2, clip_skip=clip_skip))


@pytest.mark.parametrize(
    ("model", "written"),
    [
        ("/home/me/models/v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly"),
        ("C:\\models\\dreamshaper_8.ckpt", "dreamshaper_8"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("builtin", "builtin"),
    ],
)
def test_model_without_extension(model, written):
    text = format_parameters(GenerateRequest(prompt="x", steps=2), model_id=model)
    assert f"Model: {written}," in text


def test_lora_and_ti_hashes_as_a1111_quotes_them():
    extra = {"Lora hashes": "shapes: 0123456789ab, style_v2: ba9876543210", "TI hashes": "bad-hands: 1a2b3c4d5e6f"}
    text = format_parameters(GenerateRequest(prompt="x", steps=2, seed=1), model_id="m", extra=extra)
    last = text.split("\n")[-1]
    assert 'Lora hashes: "shapes: 0123456789ab, style_v2: ba9876543210", TI hashes: "bad-hands: 1a2b3c4d5e6f"' in last
    assert last.index("TI hashes") < last.index("Version")
    # A1111's own pattern reads them back whole
    found = dict(A1111_PARAM_RE.findall(last))
    assert unquote(found["Lora hashes"]) == extra["Lora hashes"] and unquote(found["TI hashes"]) == extra["TI hashes"]


def test_edit_writes_one_t0_the_one_used():
    request = EditRequest(prompt="cat", source_prompt="dog", t0=700, steps=10, width=64, height=64)
    text = format_parameters(request, seed=1, model_id="m", extra={"t0": 681, "Edit method": "direct"})
    last = text.split("\n")[-1]
    assert last.count("T0:") == 1 and "T0: 681" in last and "t0:" not in last
    back: Any = parameters_to_request(parse_parameters(text))
    assert back.kind == "edit" and back.t0 == 681


def test_inpaint_extras_read_back_from_a1111_text_alone():
    """Outpaint, masked content, soft inpainting, blend band and colour match survive a file that has only the
    A1111 `parameters` text (no JSON chunk of ours)."""
    from desktop_app.core.requests import InpaintRequest

    image, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    request = InpaintRequest(
        prompt="a cat",
        image=image,
        mask=mask,
        steps=10,
        seed=1,
        extend=(64, 32, 0, 0),
        outpaint_fill="blur",
        outpaint_overlap=24,
        soft_mask=True,
        color_match=True,
        blend_band=6,
        masked_content="latent_noise",
    )
    extra = {
        "Outpaint": "left 64, top 32, blur",
        "Outpaint overlap": 24,
        "Masked content": "latent noise",
        "Soft inpainting": True,
        "Blend band": 6,
        "Colour match": True,
    }
    text = format_parameters(request, 1, extra=extra)
    back = parameters_to_request(parse_parameters(text))
    assert isinstance(back, InpaintRequest)
    assert back.extend == (64, 32, 0, 0) and back.outpaint_fill == "blur" and back.outpaint_overlap == 24
    assert back.masked_content == "latent_noise" and back.soft_mask and back.color_match and back.blend_band == 6
    # A1111's own soft-inpainting key reads as ours
    a1111 = parse_parameters("a cat\nSteps: 20, Seed: 1, Mode: inpaint, Soft inpainting enabled: True")
    assert parameters_to_request(a1111).soft_mask is True  # type: ignore[attr-defined]


def test_the_region_mode_reads_back_from_a1111_text():
    latent = parse_parameters('a cat\nSteps: 20, Seed: 1, Regions: "2, latent", Mode: generate')
    assert parameters_to_request(latent).region_mode == "latent"
    attention = parse_parameters("a cat\nSteps: 20, Seed: 1, Regions: 2, Mode: generate")
    assert parameters_to_request(attention).region_mode == "attention"


# -- edits: attention control, LEDITS++ concepts, flow solvers ------------------------------------------------------
def _edit(**fields: Any) -> EditRequest:
    return EditRequest(prompt="a blue circle", source_prompt="a red circle", steps=10, seed=3, t0=600, **fields)


def test_prompt_to_prompt_settings_are_written_and_read_back_from_a1111_text():
    request = _edit(
        method="direct",
        attention_control="p2p",
        cross_replace=0.8,
        self_replace=0.4,
        local_blend=True,
        reweight="blue:2",
    )
    text = format_parameters(request, model_id="builtin")
    assert "Attention control: Prompt-to-Prompt, Cross replace: 0.8, Self replace: 0.4, Local blend: True" in text
    assert 'Re-weight: "blue:2"' in text  # a colon: JSON-quoted, as A1111 quotes
    back = parameters_to_request(parse_parameters(text))
    assert isinstance(back, EditRequest)
    assert (back.method, back.attention_control, back.cross_replace, back.self_replace) == ("direct", "p2p", 0.8, 0.4)
    assert (back.local_blend, back.reweight) == (True, "blue:2")
    off = format_parameters(_edit(method="ddim", attention_control="off", cross_replace=0.5))
    assert "Attention control: Off" in off and "Cross replace" not in off  # no settings of a control that is off
    assert parameters_to_request(parse_parameters(off)).attention_control == "off"  # type: ignore[attr-defined]
    assert "Attention control" not in format_parameters(_edit(method="ddim"))  # the model's default: not said


def test_ledits_concepts_are_one_line_and_read_back():
    from desktop_app.core.requests import EditConcept

    concepts = (
        EditConcept("a blue hat", 7.0),
        EditConcept("a red scarf", 5.0, True),
        EditConcept("a bow", 4, False, 0.7),
    )
    text = format_parameters(_edit(method="ledits", edit_concepts=concepts))
    assert "Edit concepts: + a blue hat @ 7; - a red scarf @ 5; + a bow @ 4 / 0.7" in text
    assert len(text.splitlines()) == 2  # prompt, parameters: the concepts do not break the line
    back = parameters_to_request(parse_parameters(text))
    assert isinstance(back, EditRequest) and back.edit_concepts == concepts
    # our JSON chunk keeps them too, exactly
    image = Image.new("RGB", (8, 8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=build_png_info(_edit(method="ledits", edit_concepts=concepts), seed=3))
    ours = read_png_metadata(buffer.getvalue()).request
    assert isinstance(ours, EditRequest) and ours.edit_concepts == concepts


def test_a_damaged_concept_line_leaves_the_concepts_out_with_a_notice():
    params = parse_parameters("a\nSteps: 10, Seed: 1, Mode: edit, Edit method: ledits, Edit concepts: + a hat @ x")
    request, notices = _parameters_to_request(params)
    assert isinstance(request, EditRequest) and request.edit_concepts == ()
    assert any("Edit concepts" in n and "no number after @" in n for n in notices)


def test_the_flow_solver_is_written_and_names_the_method_when_alone():
    text = format_parameters(_edit(method="rf-solver"))
    assert "Flow solver: RF-Solver" in text
    assert "Flow solver" not in format_parameters(_edit(method="kontext"))  # an instruction edit inverts nothing
    other_tool = "a\nSteps: 28, Seed: 1, Mode: edit, Flow solver: FireFlow"
    request = parameters_to_request(parse_parameters(other_tool))
    assert isinstance(request, EditRequest) and request.method == "fireflow"


def test_a_full_depth_flow_edit_reads_back_as_strength_one():
    """A flow edit from sigma 1 records T0: 1000 (timestep sigma * 1000): reused, it is strength 1, not a t0 that the
    request's 1..999 range refuses."""
    text = "a blue circle\nSteps: 8, Seed: 1, Mode: edit, T0: 1000, Edit method: fireflow, Source prompt: a red circle"
    request = parameters_to_request(parse_parameters(text))
    assert isinstance(request, EditRequest) and request.t0 is None and request.strength == 1.0
    request.validate() if request.image is not None else None
    shallow = parameters_to_request(parse_parameters(text.replace("T0: 1000", "T0: 700")))
    assert isinstance(shallow, EditRequest) and shallow.t0 == 700 and shallow.strength is None


def test_the_settings_the_engine_used_are_written_where_the_request_left_them_to_the_model():
    """A model without edit settings: the request leaves the P2P shares to the engine, which says what it used."""
    request = _edit(method="direct", attention_control="p2p")
    text = format_parameters(request, extra={"Cross replace": 0.8, "Self replace": 0.4, "Local blend": False})
    assert "Cross replace: 0.8" in text and "Self replace: 0.4" in text and "Local blend: False" in text
    assert text.count("Cross replace") == 1


def test_fluxs_distilled_guidance_is_written_and_read_as_forge_does():
    """FLUX.1 dev's guidance is distilled, not CFG: Forge writes "CFG scale: 1, Distilled CFG Scale: 3.5"; so do we,
    and either text reads back as guidance 3.5 (a CFG scale of 3.5 would double every step's cost in Forge)."""
    request = GenerateRequest(prompt="a fox", steps=28, guidance=3.5, seed=1, width=1024, height=1024)
    text = format_parameters(request, extra={"Distilled CFG Scale": 3.5})
    assert "CFG scale: 1, Distilled CFG Scale: 3.5" in text and text.count("CFG scale") == 1
    assert parameters_to_request(parse_parameters(text)).guidance == 3.5
    forge = "a fox\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7"
    assert parameters_to_request(parse_parameters(forge)).guidance == 3.5
    assert "CFG scale: 3.5" in format_parameters(request)  # SD: CFG as ever
