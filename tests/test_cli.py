"""The headless commands: PNGs with parameters, exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from desktop_app.cli.main import main
from desktop_app.core.infotext import read_png_metadata


def _parameters(path) -> str:
    """The ``parameters`` text chunk of a PNG the CLI wrote."""
    with Image.open(path) as image:
        assert isinstance(image, PngImageFile), type(image)
        return image.text["parameters"]


@pytest.fixture()
def source_png(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def mask_png(tmp_path):
    path = tmp_path / "mask.png"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(path)
    return path


def test_generate_writes_png_with_parameters(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a red circle on a blue background",
            "--model",
            str(tiny_model_dir),
            "--seed",
            "11",
            "--steps",
            "3",
            "--guidance",
            "6",
            "--negative",
            "blurry",
            "--scheduler",
            "euler",
            "--batch",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert out.is_file() and (tmp_path / "out-2.png").is_file()
    text = _parameters(out)
    assert text.splitlines()[0] == "a red circle on a blue background"
    assert "Negative prompt: blurry" in text
    assert "Steps: 3, Sampler: Euler, CFG scale: 6, Seed: 11, Size: 64x64" in text
    assert "Seed: 12" in _parameters(tmp_path / "out-2.png")
    assert "denoise" in capsys.readouterr().err  # the progress bar


def test_generate_replays_from_its_own_metadata(tiny_model_dir, tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    args = ["generate", "-p", "x", "--model", str(tiny_model_dir), "--steps", "2", "--no-history"]
    assert main(args + ["--out", str(first)]) == 0
    request = read_png_metadata(first).request
    assert request is not None
    seed = request.seed
    assert main(args + ["--seed", str(seed), "--out", str(second)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_img2img_and_inpaint(tiny_model_dir, tmp_path, source_png, mask_png):
    out = tmp_path / "i2i.png"
    assert (
        main(
            [
                "img2img",
                "--image",
                str(source_png),
                "--strength",
                "0.5",
                "-p",
                "x",
                "--model",
                str(tiny_model_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Denoising strength: 0.5" in _parameters(out)
    out = tmp_path / "inp.png"
    assert (
        main(
            [
                "inpaint",
                "--image",
                str(source_png),
                "--mask",
                str(mask_png),
                "-p",
                "x",
                "--model",
                str(tiny_model_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result, src = np.asarray(Image.open(out)), np.asarray(Image.open(source_png))
    assert np.array_equal(result[:4], src[:4])
    assert not np.array_equal(result[28:36, 28:36], src[28:36, 28:36])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["generate", "--size", "65x64"], "multiple of 8"),
        (["generate", "--steps", "500"], "Steps"),
        (["generate", "--guidance", "99"], "Guidance"),
        (["generate", "--seed", "-5"], "Seed"),
        (["generate", "--model", "/no/such/folder"], "No model folder"),
        (["img2img", "--image", "/no/such.png"], "No image file"),
        (["img2img", "--image", "__corrupt__"], "not an image"),
        (["inpaint", "--image", "__src__", "--mask", "__empty__"], "mask is empty"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(
    tiny_model_dir, tmp_path, source_png, capsys, extra: list[str], message
):
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"garbage")
    empty = tmp_path / "e.png"
    Image.new("L", (64, 64)).save(empty)
    subs = {"__corrupt__": str(corrupt), "__src__": str(source_png), "__empty__": str(empty)}
    args = [subs.get(a, a) for a in extra]
    if "--model" not in args:
        args += ["--model", str(tiny_model_dir)]
    code = main(args + ["-p", "x", "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "error:" in err and "hint:" in err
    assert not (tmp_path / "o.png").exists()


def test_python_m_desktop_app_matches_the_command():
    out = subprocess.run([sys.executable, "-m", "desktop_app", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("diffusion-desk ")
    helped = subprocess.run(
        [sys.executable, "-m", "desktop_app", "generate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "--guidance" in helped.stdout and "--size" in helped.stdout


def test_generated_images_land_in_the_history(tiny_model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "-p",
                "a purple triangle",
                "--model",
                str(tiny_model_dir),
                "--steps",
                "2",
                "--out",
                str(tmp_path / "h.png"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["history", "list", "--search", "purple", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and "purple triangle" in json.dumps(rows)


# -- `diffusion-desk FILE ...`: what the desktop entry runs (Exec=diffusion-desk %F) ------------------------------


@pytest.fixture()
def gui_calls(monkeypatch):
    """Stands in for the window: records what run_gui was asked to open."""
    from desktop_app.app import application

    calls: list[dict] = []
    monkeypatch.setattr(application, "run_gui", lambda **kwargs: calls.append(kwargs) or 0)
    return calls


def test_a_file_argument_goes_to_the_window_not_to_the_subcommands(tmp_path, source_png, gui_calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--data-dir", str(tmp_path / "d"), "in.png"]) == 0
    assert gui_calls[0]["files"] == [str(source_png)]  # made absolute: the running window has another cwd


def test_several_files_and_file_urls(tmp_path, source_png, gui_calls):
    spaced = tmp_path / "a b.png"
    spaced.write_bytes(source_png.read_bytes())
    assert main(["--data-dir", str(tmp_path / "d"), str(source_png), "file://" + str(spaced).replace(" ", "%20")]) == 0
    assert gui_calls[0]["files"] == [str(source_png), str(spaced)]


def test_a_file_named_like_a_command_after_double_dash(tmp_path, gui_calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "history").write_bytes(b"x")
    assert main(["--data-dir", str(tmp_path / "d"), "--", "history"]) == 0
    assert gui_calls[0]["files"] == [str(tmp_path / "history")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png"], "No such file: missing.png"),
        (["generte"], "No such file or command: generte"),
        (["https://example.com/x.png"], "only local files"),
        (["."], "is a folder"),
    ],
)
def test_a_bad_file_argument_is_a_clear_error(tmp_path, gui_calls, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert gui_calls == []  # nothing started, nothing handed to a running window


def test_the_real_command_with_a_missing_file_exits_2_with_one_message(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "desktop_app", "--data-dir", str(tmp_path), str(tmp_path / "nope.png")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "invalid choice" not in out.stderr and "No such file" in out.stderr


def test_help_lists_the_commands_and_the_files():
    out = subprocess.run([sys.executable, "-m", "desktop_app", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "generate" in out.stdout and "outpaint" in out.stdout and "FILE" in out.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "desktop_app", "models", "--help"], capture_output=True, text=True, timeout=60
    )
    assert sub.stdout.startswith("usage: diffusion-desk models")


# -- --mask-grow and --resize-mode (defects 12 and 9) --------------------------------------------------------------


def _job(command: str, tiny_model_dir, out, *extra: str) -> int:
    return main(
        [command, "-p", "x", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "5", "--no-history"]
        + list(extra)
        + ["--out", str(out)]
    )


def _outside(mask_png, grow: int = 0) -> np.ndarray:
    """Pixels more than `grow` px outside the mask's square (16..48)."""
    outside = np.ones((64, 64), bool)
    outside[max(0, 16 - grow) : 48 + grow, max(0, 16 - grow) : 48 + grow] = False
    return outside


def test_inpaint_mask_grow_lets_the_change_spill_over_only_when_asked(tiny_model_dir, tmp_path, source_png, mask_png):
    src = np.asarray(Image.open(source_png).convert("RGB"))
    plain, grown = tmp_path / "plain.png", tmp_path / "grown.png"
    args = ("--image", str(source_png), "--mask", str(mask_png))
    assert _job("inpaint", tiny_model_dir, plain, *args) == 0
    assert _job("inpaint", tiny_model_dir, grown, *args, "--mask-grow", "6") == 0
    plain_px, grown_px = np.asarray(Image.open(plain)), np.asarray(Image.open(grown))
    outside = _outside(mask_png)
    assert np.array_equal(plain_px[outside], src[outside])  # the default: every unpainted pixel is the source's
    ring = outside & ~_outside(mask_png, 6)  # the 6 px around the painted square
    assert not np.array_equal(grown_px[ring], src[ring])  # grown: the change reaches past the painted edge
    far = _outside(mask_png, 6)
    assert np.array_equal(grown_px[far], src[far])  # and no further than the grow
    assert "Mask grow" not in _parameters(plain)
    assert "Mask grow: 6" in _parameters(grown)
    assert vars(read_png_metadata(grown).request)["mask_grow"] == 6


def test_edit_takes_mask_grow(tiny_model_dir, tmp_path, source_png, mask_png):
    out = tmp_path / "edit.png"
    code = _job(
        "edit",
        tiny_model_dir,
        out,
        "--image",
        str(source_png),
        "--mask",
        str(mask_png),
        "--mask-grow",
        "4",
        "--t0",
        "400",
    )
    assert code == 0
    assert "Mask grow: 4" in _parameters(out) and "Mode: edit" in _parameters(out)
    src = np.asarray(Image.open(source_png).convert("RGB"))
    far = _outside(mask_png, 4)
    assert np.array_equal(np.asarray(Image.open(out))[far], src[far])


@pytest.mark.parametrize("command", ["img2img", "inpaint", "edit"])
def test_resize_mode_fits_a_source_of_another_shape(tiny_model_dir, tmp_path, command, capsys):
    wide = tmp_path / "wide.png"  # 2:1, worked at 64x64 (the tiny model's size): the mode decides how
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, :64] = (220, 30, 30)
    pixels[:, 64:] = (30, 30, 220)
    Image.fromarray(pixels).save(wide)
    mask = tmp_path / "wide-mask.png"
    Image.new("L", (128, 64), 255).save(mask)
    extra = ["--image", str(wide)] + (["--mask", str(mask)] if command == "inpaint" else [])
    outputs = {}
    for mode in ("just_resize", "crop_and_resize", "resize_and_fill"):
        out = tmp_path / f"{command}-{mode}.png"
        assert _job(command, tiny_model_dir, out, *extra, "--size", "64x64", "--resize-mode", mode) == 0
        with Image.open(out) as image:
            assert image.size == (128, 64)  # back at the source's size
            outputs[mode] = np.asarray(image.convert("RGB"))
        text = _parameters(out)
        assert ("Resize mode" in text) == (mode != "just_resize"), text
        request = read_png_metadata(out).request
        assert request is not None and vars(request)["resize_mode"] == mode
    assert "Crop and resize" in _parameters(tmp_path / f"{command}-crop_and_resize.png")
    assert "Resize and fill" in _parameters(tmp_path / f"{command}-resize_and_fill.png")
    assert not np.array_equal(outputs["just_resize"], outputs["crop_and_resize"])
    assert not np.array_equal(outputs["crop_and_resize"], outputs["resize_and_fill"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["img2img", "--resize-mode", "stretch"], "invalid choice: 'stretch'"),
        (["inpaint", "--mask", "m.png", "--mask-grow", "-2"], "0 or more"),
        (["edit", "--mask-grow", "two"], "whole number of pixels"),
        (["generate", "--resize-mode", "crop_and_resize"], "unrecognized arguments"),
        (["generate", "--mask-grow", "4"], "unrecognized arguments"),
        (["inpaint", "--mask", "m.png", "--masked-content", "noise"], "'noise' is not one of: original, fill"),
        (["outpaint", "--extend", "left=abc"], "left='abc' is not a whole number"),
        (["outpaint", "--extend", "left=8", "--fill", "mirror"], "invalid choice: 'mirror'"),
    ],
)
def test_bad_resize_mode_or_mask_grow_is_a_usage_error(tmp_path, source_png, capsys, args, message):
    image = [] if args[0] == "generate" else ["--image", str(source_png)]
    with pytest.raises(SystemExit) as exit_:
        main(args + image + ["-p", "x", "--out", str(tmp_path / "o.png")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_inpaint_takes_masked_content(tiny_model_dir, tmp_path, source_png, mask_png):
    """A1111's names work ("latent noise"); the infotext says which; the unpainted pixels stay the source's."""
    src = np.asarray(Image.open(source_png).convert("RGB"))
    outputs = {}
    for mode in ("original", "latent noise", "latent_nothing"):
        out = tmp_path / f"{mode}.png"
        args = ("--image", str(source_png), "--mask", str(mask_png), "--strength", "0.5", "--masked-content", mode)
        assert _job("inpaint", tiny_model_dir, out, *args) == 0
        outputs[mode] = np.asarray(Image.open(out).convert("RGB"))
        assert np.array_equal(outputs[mode][_outside(mask_png)], src[_outside(mask_png)])
    assert "Masked content" not in _parameters(tmp_path / "original.png")
    assert "Masked content: latent noise" in _parameters(tmp_path / "latent noise.png")
    assert vars(read_png_metadata(tmp_path / "latent_nothing.png").request)["masked_content"] == "latent_nothing"
    inside = ~_outside(mask_png)
    assert not np.array_equal(outputs["original"][inside], outputs["latent noise"][inside])
    assert not np.array_equal(outputs["latent noise"][inside], outputs["latent_nothing"][inside])


def test_the_real_command_lists_the_resize_modes_and_mask_grow():
    helped = subprocess.run(
        [sys.executable, "-m", "desktop_app", "inpaint", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0
    assert "--mask-grow N" in helped.stdout
    assert "{just_resize,crop_and_resize,resize_and_fill}" in helped.stdout


# -- samplers as users write them, clip skip, progress only on a terminal -----------------------------------------
@pytest.mark.parametrize(
    "sampler_args",
    [
        ["--sampler", "DPM++ 2M Karras"],
        ["--sampler", "dpmpp_2m", "--schedule", "karras"],
        ["--scheduler", "dpm++ 2m", "--schedule", "Karras"],
    ],
)
def test_sampler_names_as_users_write_them(tiny_model_dir, tmp_path, sampler_args):
    out = tmp_path / "s.png"
    args = ["generate", "-p", "x", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "1", "--out", str(out)]
    assert main(args + sampler_args + ["--clip-skip", "2"]) == 0
    text = _parameters(out)
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in text and "Clip skip: 2" in text
    request = read_png_metadata(out).request
    assert request is not None and (request.scheduler, request.schedule, request.clip_skip) == ("dpmpp_2m", "karras", 2)


@pytest.mark.parametrize(
    ("sampler_args", "message"),
    [
        (["--sampler", "Heun"], "Unknown sampler 'Heun'"),
        (["--sampler", "Euler a", "--schedule", "karras"], "Euler a has no Karras"),
        (["--sampler", "euler", "--schedule", "beta"], "schedule type 'beta'"),
    ],
)
def test_unknown_sampler_names_the_known_ones(tiny_model_dir, tmp_path, capsys, sampler_args, message):
    out = tmp_path / "s.png"
    code = main(["generate", "-p", "x", "--model", str(tiny_model_dir), "--out", str(out), *sampler_args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "hint:" in err and "DPM++ 2M" in err
    assert not out.exists()


def test_redirected_output_gets_one_line_per_job(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.png"
    args = ["generate", "-p", "x", "--model", str(tiny_model_dir), "--steps", "3", "--batch", "2", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("generate:")]
    assert lines == [lines[0]] and "2 images" in lines[0] and "denoise 3/3" in lines[0], err


def test_a_terminal_gets_progress_bars(tiny_model_dir, tmp_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    out = tmp_path / "t.png"
    assert main(["generate", "-p", "x", "--model", str(tiny_model_dir), "--steps", "3", "--out", str(out)]) == 0
    err = term.getvalue()
    assert "\r" in err and "denoise" in err and "3/3" in err  # tqdm redraws its bar in place
    assert not any(line.startswith("generate:") for line in err.splitlines())


def test_inpaint_blend_band_soft_mask_and_colour_match_from_the_command_line(
    tiny_model_dir, tmp_path, source_png, mask_png
):
    src = np.asarray(Image.open(source_png).convert("RGB"))
    out = tmp_path / "blended.png"
    args = ("--image", str(source_png), "--mask", str(mask_png), "--soft-mask", "--color-match")
    assert _job("inpaint", tiny_model_dir, out, *args, "--blend-band", "4") == 0
    px = np.asarray(Image.open(out))
    far = _outside(mask_png, 4 + 4)  # past the band (and the feather's reach)
    assert np.array_equal(px[far], src[far])  # every pixel past mask + band is the source's
    ring = _outside(mask_png) & ~_outside(mask_png, 4)
    assert not np.array_equal(px[ring], src[ring])  # the band blends the result into the source
    text = _parameters(out)
    assert "Soft inpainting: True" in text and "Blend band: 4" in text and "Colour match: True" in text
    request = read_png_metadata(out).request
    assert request is not None and vars(request)["blend_band"] == 4 and vars(request)["soft_mask"] is True


def test_edit_at_strength_1_starts_from_the_deepest_timestep_of_the_schedule(tiny_model_dir, tmp_path, source_png):
    out = tmp_path / "deep.png"
    assert _job("edit", tiny_model_dir, out, "--image", str(source_png), "--strength", "1.0") == 0
    # asked: t0 999 (T - 1, was 1000 and refused); used: the deepest step of the 2-step DDIM schedule (501, 1)
    assert "T0: 501" in _parameters(out)
