"""Images carry how they were made: saving writes both chunks, opening one fills the prompt panel."""

from __future__ import annotations

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_ui_window import child, click_generate, fake_engine, window  # noqa: F401

from desktop_app.core.infotext import read_png_metadata
from tests.ui_conftest_helpers import qloop  # noqa: F401


def test_saved_result_carries_parameters_and_replay_json(qtbot, window, tmp_path):
    child(window, "promptEdit").setPlainText("a green square on a black background")
    child(window, "stepsSpin").setValue(3)
    result = click_generate(qtbot, window)
    out = tmp_path / "saved.png"
    assert window.save_result(out)
    with Image.open(out) as png:
        text = png.info
    assert text["parameters"].startswith("a green square on a black background")
    info = read_png_metadata(out)
    assert info is not None and info.request is not None
    assert info.source == "diffusion_desk" and info.request.steps == 3 and info.seed == result.seeds[0]


def test_opening_an_a1111_png_fills_the_prompt_panel(qtbot, window, tmp_path):
    meta = PngInfo()
    meta.add_text(
        "parameters",
        "a yellow circle\nNegative prompt: blurry\nSteps: 17, Sampler: Euler a, CFG scale: 6.5, Seed: 1234, Size: 64x64",
    )
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path, pnginfo=meta)
    assert window.open_image(str(path))
    assert child(window, "promptEdit").toPlainText() == "a yellow circle"
    assert child(window, "negativePromptEdit").toPlainText() == "blurry"
    assert child(window, "stepsSpin").value() == 17
    assert abs(child(window, "guidanceSpin").value() - 6.5) < 1e-6
    assert window.prompt_panel.mode() == "img2img"  # it was opened as a source


def test_opening_a_plain_png_keeps_the_prompt(qtbot, window, tmp_path):
    child(window, "promptEdit").setPlainText("keep me")
    path = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(path)
    assert window.open_image(str(path))
    assert child(window, "promptEdit").toPlainText() == "keep me"
