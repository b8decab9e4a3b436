"""Hostile and unlucky inputs outside the history (issue 17): each gets a message, nothing is changed or lost.

The history's own cases (adoption, read-only history, full disk) are in tests/test_hostile_history.py.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from desktop_app.core.requests import MAX_SEED, GenerateRequest, InvalidRequest, sanitize_params
from tests.ui_conftest_helpers import FakeEngine, child, make_window, qloop  # noqa: F401

# -- Major 5: odd values in a dropped PNG's metadata -----------------------------------------------------------------
A1111 = "a red square\nNegative prompt: blurry\n"
OURS = "diffusion_desk"

# (name, chunk key, chunk text): the 16 crafted drops, A1111 text, our JSON chunk and InvokeAI's.
CRAFTED: list[tuple[str, str, str]] = [
    ("a1111-huge-steps", "parameters", A1111 + "Steps: 99999999999999999999, Sampler: Euler a, CFG scale: 7, Seed: 1"),
    ("a1111-huge-size", "parameters", A1111 + "Steps: 20, Size: 99999x99999, CFG scale: 7, Seed: 1"),
    ("a1111-odd-size", "parameters", A1111 + "Steps: 20, Size: 7x9, CFG scale: 7, Seed: 1"),
    ("a1111-cfg", "parameters", A1111 + "Steps: 20, CFG scale: -5, Seed: 1, Sampler: Teleport"),
    ("a1111-seed", "parameters", A1111 + "Steps: 20, CFG scale: 7, Seed: 99999999999999999999"),
    ("a1111-strength", "parameters", A1111 + "Steps: 20, CFG scale: 7, Mode: img2img, Denoising strength: 7"),
    ("a1111-mask-blur", "parameters", A1111 + "Steps: 20, CFG scale: 7, Mode: inpaint, Mask blur: 100000"),
    ("a1111-t0", "parameters", A1111 + "Steps: 20, CFG scale: 1e400, Mode: edit, T0: 99999"),
    ("ours-batch-null", OURS, json.dumps({"request": {"prompt": "p", "batch": None}})),
    ("ours-width-x", OURS, json.dumps({"request": {"prompt": "p", "width": "x", "height": 1e9}})),
    ("ours-steps-float", OURS, json.dumps({"request": {"prompt": "p", "steps": 1e30, "guidance": "nan"}})),
    (
        "ours-inpaint",
        OURS,
        json.dumps({"request": {"kind": "inpaint", "prompt": "p", "mask_grow": 10**6, "only_masked_padding": -3}}),
    ),
    (
        "ours-choices",
        OURS,
        json.dumps({"request": {"prompt": "p", "resize_mode": ["x"], "scheduler": {"a": 1}, "method": 5}}),
    ),
    ("ours-seed-loras", OURS, json.dumps({"request": {"prompt": "p", "seed": 2**63, "loras": "x"}})),
    ("ours-types", OURS, json.dumps({"request": {"prompt": ["x"], "negative_prompt": 7, "steps": True}})),
    ("invokeai", "invokeai_metadata", json.dumps({"positive_prompt": "p", "steps": 1e20, "width": "x", "seed": -1})),
]


def crafted_png(folder, name: str, key: str, text: str):
    meta = PngInfo()
    meta.add_text(key, text)
    path = folder / f"{name}.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, pnginfo=meta)
    return path


@pytest.fixture
def window(qtbot, qloop, tmp_path):  # noqa: F811
    w = make_window(qtbot, tmp_path / "data", FakeEngine())
    yield w
    w.close()


def drop_file(qtbot, w, path) -> None:
    """A drag entering the canvas (through Qt's event dispatch) and its drop (Qt only delivers a drop during a real
    drag, so the handler is called as the drag machinery would); the canvas's signal reaches the window's slot."""
    canvas = child(w, "maskCanvas")
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(
        QPoint(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(canvas, enter)
    assert enter.isAccepted()
    drop = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    canvas.dropEvent(drop)
    qtbot.wait(20)  # the deferred notice


def assert_sane(w) -> None:
    pp = w.prompt_panel
    assert 1 <= child(w, "stepsSpin").value() <= 150
    assert 64 <= child(w, "widthSpin").value() <= 2048 and child(w, "widthSpin").value() % 8 == 0
    assert 64 <= child(w, "heightSpin").value() <= 2048 and child(w, "heightSpin").value() % 8 == 0
    assert 1 <= child(w, "batchSpin").value() <= 16
    assert 0 <= child(w, "guidanceSpin").value() <= 30
    assert -1 <= child(w, "seedSpin").value() <= MAX_SEED
    assert isinstance(pp.prompt_edit.toPlainText(), str)
    w.build_request().validate()  # what Generate would submit is a valid request


@pytest.mark.parametrize(("name", "key", "text"), CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_png_dropped_on_the_window(qtbot, window, tmp_path, name, key, text):
    """Dropped through the canvas's real drop event; pytest-qt fails the test on any exception that reaches Qt's
    event loop. The fields hold sane values and the status bar says what was adjusted."""
    path = crafted_png(tmp_path, name, key, text)
    drop_file(qtbot, window, path)
    assert window.document.source is not None  # the image itself is opened
    assert_sane(window)
    message = window.statusBar().currentMessage()
    assert "adjusted" in message, message


def test_huge_steps_in_a1111_text_are_clamped_with_a_notice(qtbot, window, tmp_path):
    path = crafted_png(tmp_path, *CRAFTED[0])
    drop_file(qtbot, window, path)
    assert child(window, "stepsSpin").value() == 150
    assert "Steps 99999999999999999999 is out of range (1 to 150): 150 is used" in window.statusBar().currentMessage()
    assert child(window, "promptEdit").toPlainText() == "a red square"


def test_reuse_parameters_of_an_odd_request(qtbot, window):
    """ "Reuse parameters" hands the window a request (or a dict) from the history: odd values are clamped there too."""
    window.fill_from_request({"prompt": "p", "steps": 10**20, "width": "x", "batch": None, "seed": -7})
    assert child(window, "stepsSpin").value() == 150
    assert "Steps" in window.statusBar().currentMessage()
    assert_sane(window)
    window.fill_from_request(GenerateRequest(prompt="q", steps=10**20))  # a request object, never validated
    assert child(window, "stepsSpin").value() == 150 and child(window, "promptEdit").toPlainText() == "q"


def test_sanitize_params_types_and_ranges():
    clean, notices = sanitize_params({"batch": None, "width": "x", "steps": "12", "guidance": 1e400, "kind": 3})
    assert clean == {"steps": 12}
    assert len(notices) == 4
    assert sanitize_params({"seed": 2**40})[0] == {"seed": None}
    assert sanitize_params([1, 2])[0] == {}


@pytest.mark.parametrize("data", [{"batch": None}, {"width": "x"}, {"steps": 1.5}, {"prompt": 5}, {"loras": "x"}])
def test_from_dict_raises_a_validation_error_not_type_error(data):
    with pytest.raises(InvalidRequest):
        GenerateRequest.from_dict(data)
    with pytest.raises(InvalidRequest):
        GenerateRequest(**{k: v for k, v in data.items() if k != "loras"}).validate() if "loras" not in data else (
            GenerateRequest.from_dict(data)
        )
