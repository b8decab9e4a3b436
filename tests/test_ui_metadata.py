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
    qtbot.waitUntil(lambda: "holds no generation parameters" in window.statusBar().currentMessage(), timeout=2000)


def test_a_comfyui_png_fills_the_prompt_panel_with_sampler_and_schedule(qtbot, window, tmp_path):
    import json

    graph = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 77,
                "steps": 12,
                "cfg": 5.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    }
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(graph))
    path = tmp_path / "comfy.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path, pnginfo=meta)
    assert window.open_image(str(path))
    assert child(window, "promptEdit").toPlainText() == "a blue square"
    assert child(window, "negativePromptEdit").toPlainText() == "blurry"
    assert child(window, "stepsSpin").value() == 12
    assert child(window, "schedulerCombo").currentText() == "DPM++ 2M"
    assert child(window, "scheduleCombo").currentText() == "Karras"
