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


# -- Major 2: a data folder that cannot be written ------------------------------------------------------------------
def _read_only(folder):
    """`folder` made read-only for real: a read-only bind mount (root, where chmod does not stop writes), else
    chmod 555 (a normal user). Yields, then undoes it; skips when neither works here."""
    import os
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot bind-mount here")
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot remount read-only here")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@pytest.fixture
def read_only_data(tmp_path):
    yield from _read_only(tmp_path / "data")


def _cli(*args: str, env_extra: dict | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "desktop_app", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_commands_start_on_a_read_only_data_folder(read_only_data):
    """Through the real command line (a subprocess) on a read-only bind mount (root) or a chmod 555 folder: the
    command runs, one stderr line says what is read-only, no traceback, nothing was written."""
    done = _cli("--data-dir", str(read_only_data), "models")
    assert done.returncode == 0, done.stderr
    assert "builtin" in done.stdout and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "cannot be written" in line]
    assert len(lines) == 1 and "logging to stderr only" in lines[0] and "no cache" in lines[0], done.stderr
    assert list(read_only_data.iterdir()) == []
    sub = _cli("--data-dir", str(read_only_data / "not-there"), "models")  # a data folder that cannot be created
    assert sub.returncode == 0 and "Traceback" not in sub.stderr and "cannot be written" in sub.stderr


def test_logging_falls_back_to_stderr_when_the_log_file_cannot_open(tmp_path, monkeypatch):
    """Subprocess-free: the log folder is a file (works as root too), so opening the log raises an OSError."""
    import logging

    from desktop_app.app import logs
    from desktop_app.core import paths

    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "logs").write_text("a file where the folder should be")
    monkeypatch.setattr(paths, "_override", tmp_path / "data")
    paths._unwritable.clear()
    try:
        assert logs.setup_logging() is None
        assert any(getattr(h, "_diffusion_desk", False) for h in root.handlers)
        notice = paths.read_only_notice()
        assert notice is not None and "logging to stderr only" in notice
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        paths._unwritable.clear()


def test_the_window_says_the_data_folder_is_read_only(qtbot, qloop, tmp_path, monkeypatch):  # noqa: F811
    """Subprocess-free, PermissionError injected (root ignores chmod): the window starts and its banner says it."""
    from desktop_app.app.application import announce_read_only
    from desktop_app.core import paths

    w = make_window(qtbot, tmp_path / "data", FakeEngine())
    real = paths.writable

    def refuse(folder):
        paths.note_unwritable(folder, PermissionError(13, "Permission denied"))
        return False

    monkeypatch.setattr(paths, "writable", refuse)
    monkeypatch.setattr(paths, "_override", tmp_path / "data")
    try:
        notice = announce_read_only(w)
        assert notice is not None and "no write permission" in notice
        assert w.error_banner.isVisible() and "logging to stderr only" in w.error_banner.label.text()
    finally:
        monkeypatch.setattr(paths, "writable", real)
        paths._unwritable.clear()
        w.close()


# -- Minor: hostile model files --------------------------------------------------------------------------------------
def _safetensors(path, header: bytes, tail: bytes = b""):
    import struct

    path.write_bytes(struct.pack("<Q", len(header)) + header + tail)
    return path


HOSTILE_HEADERS: list[tuple[str, bytes, str]] = [
    ("list", b"[1,2,3]", "the header is a JSON list"),
    ("string", b'"hello"', "the header is a JSON str"),
    (
        "meta-list",
        json.dumps({"__metadata__": [1], "a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode(),
        "__metadata__ is a JSON list",
    ),
    ("int-shape", json.dumps({"a": {"dtype": "F16", "shape": 5}}).encode(), "not a list of whole numbers"),
    ("str-shape", json.dumps({"a": {"dtype": "F16", "shape": ["x"]}}).encode(), "not a list of whole numbers"),
    ("entry-list", json.dumps({"a": [1, 2]}).encode(), "is not an object"),
    ("deep-array", b"[" * 200_000 + b"]" * 200_000, "nests too deep"),
    ("deep-object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests too deep"),
    ("not-json", b"\xff\xfe{", "not JSON"),
]


@pytest.mark.parametrize(("name", "header", "message"), HOSTILE_HEADERS, ids=[h[0] for h in HOSTILE_HEADERS])
def test_hostile_safetensors_headers_are_model_errors(tmp_path, capsys, name, header, message):
    """`models --detect` (the real command's main) and the loaders' header reader: a ModelError, not a traceback."""
    from desktop_app.cli.main import main
    from desktop_app.core.errors import ModelError
    from desktop_app.engine.checkpoints import read_header

    path = _safetensors(tmp_path / f"{name}.safetensors", header, b"\0" * 4)
    with pytest.raises(ModelError, match=message) as info:
        read_header(path)
    assert info.value.hint
    code = main(["--data-dir", str(tmp_path / "data"), "models", "--detect", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "hint:" in err and message in err


def test_detect_names_a_pickle_and_the_opt_in(tmp_path, capsys):
    from desktop_app.cli.main import main

    path = tmp_path / "x.ckpt"
    path.write_bytes(b"PK\x03\x04 a zip of pickles")
    code = main(["--data-dir", str(tmp_path / "data"), "models", "--detect", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a pickle checkpoint" in err and "--allow-pickle" in err
    assert "not a readable .safetensors" not in err


def test_fuzzed_safetensors_headers_raise_only_model_errors(tmp_path_factory):
    """Hypothesis, bounded (60 examples, no deadline): any JSON-ish header gives shapes or a ModelError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from desktop_app.core.errors import ModelError
    from desktop_app.engine.checkpoints import detect_family, read_header

    folder = tmp_path_factory.mktemp("fuzz")
    leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    values = st.recursive(
        leaf,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
        max_leaves=12,
    )
    entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F16", "F32", 3]), "shape": values})
    names = st.sampled_from(["__metadata__", "model.diffusion_model.input_blocks.0.0.weight", "lora_unet_x.alpha", "a"])
    headers = st.dictionaries(names | st.text(max_size=12), entry | values, max_size=5) | values

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(header=headers, raw=st.booleans(), junk=st.binary(max_size=64))
    def check(header, raw, junk):
        path = folder / "f.safetensors"
        _safetensors(path, junk if raw else json.dumps(header).encode())
        try:
            shapes, metadata = read_header(path)
            detect_family(shapes, metadata, "f.safetensors")
        except ModelError as exc:
            assert exc.message and exc.hint

    check()


def test_model_index_list_pt_lora_and_pickle_folder(tmp_path, tiny_model_dir):
    import shutil

    import torch

    from desktop_app.core.errors import ModelError
    from desktop_app.engine.lora import _read
    from desktop_app.engine.models import ModelSource, load_pipeline

    folder = tmp_path / "index-list"
    folder.mkdir()
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="not an object") as info:
        load_pipeline(ModelSource.parse(str(folder)), torch.float32)
    assert info.value.hint
    for name, payload in (("tensor.pt", torch.zeros(2)), ("list.pt", [torch.zeros(2)])):
        torch.save(payload, tmp_path / name)
        with pytest.raises(ModelError, match="is not a LoRA"):
            _read(tmp_path / name, allow_pickle=True)
    pickles = tmp_path / "pickle-only"
    shutil.copytree(tiny_model_dir, pickles)
    for weights in pickles.glob("unet/*.safetensors"):
        weights.unlink()
    import collections
    import pickle

    (pickles / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(collections.Counter("ab")))
    with pytest.raises(ModelError) as info:
        load_pipeline(ModelSource.parse(str(pickles)), torch.float32, allow_pickle=True)
    assert "Cannot load the model" in info.value.message and info.value.hint


# -- Minor: images ---------------------------------------------------------------------------------------------------
def _claiming_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (what a crafted 2 KB file can do)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_data_url_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    import base64
    import time

    from desktop_app.core.errors import ImageError
    from desktop_app.core.images import image_from_data_url
    from desktop_app.core.infotext import read_png_metadata

    url = "data:image/png;base64," + base64.b64encode(_claiming_png(12000, 12000)).decode()
    started = time.monotonic()
    with pytest.raises(ImageError, match="12000x12000"):
        image_from_data_url(url)
    path = crafted_png(
        tmp_path, "bomb", OURS, json.dumps({"request": {"kind": "img2img", "prompt": "p", "image": url}})
    )
    info = read_png_metadata(path)  # the prompt still counts, the image is left out with a notice
    assert time.monotonic() - started < 2
    assert info.request is not None and info.request.prompt == "p"
    assert any("12000x12000" in n for n in info.notices)


def test_an_unreadable_file_is_said_to_be_unreadable(tmp_path, monkeypatch):
    """PermissionError injected through os.access (root reads any file, so chmod 000 proves nothing in CI)."""
    from desktop_app.core import images
    from desktop_app.core.errors import ImageError

    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)
    monkeypatch.setattr(images.os, "access", lambda *_: False)
    with pytest.raises(ImageError, match="permission denied") as info:
        images.load_image(path)
    assert "not an image" not in info.value.message


# -- Minor: --out that cannot be written ------------------------------------------------------------------------------
def test_a_result_whose_out_cannot_be_written_is_kept_in_the_history(tmp_path, capsys, tiny_model_dir):
    from desktop_app.cli.main import main
    from desktop_app.core.history import HistoryStore

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the folder should be")
    data = tmp_path / "data"
    code = main(
        [
            "--data-dir",
            str(data),
            "generate",
            "-p",
            "kept",
            "-m",
            str(tiny_model_dir),
            "--steps",
            "2",
            "-o",
            str(blocker / "out.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write" in err and "It is in the history:" in err, err
    store = HistoryStore(data / "history")
    try:
        entries = store.list()
        assert len(entries) == 1 and entries[0].prompt == "kept" and entries[0].image_path.is_file()
        assert str(entries[0].image_path) in err
    finally:
        store.close()


# -- Major 4 and sizes: strength x steps < 1, odd and phone-sized sources --------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from desktop_app.engine.engine import Engine

    return Engine(device="cpu")


def test_strength_zero_and_tiny_strength_through_the_cli(tmp_path, capsys, tiny_model_dir):
    import numpy as np

    from desktop_app.cli.main import main

    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    common = ["--data-dir", str(tmp_path / "data"), "-m", str(tiny_model_dir), "--steps", "20", "--no-history"]
    for command, strength, extra in (
        ("img2img", "0", []),
        ("img2img", "0.01", []),
        ("inpaint", "0", ["--mask", str(mask)]),
        ("inpaint", "0.02", ["--mask", str(mask)]),
    ):
        out = tmp_path / f"{command}-{strength}.png"
        argv = [*common[:2], command, "-p", "x", *common[2:], "-i", str(source), "--strength", strength, "-o", str(out)]
        assert main([*argv, *extra]) == 0, capsys.readouterr().err
        result = np.asarray(Image.open(out).convert("RGB"))
        assert result.shape == (64, 64, 3)
        if strength == "0":
            assert (result == np.asarray(Image.open(source))).all()  # 0 keeps the image


def test_the_windows_request_path_below_one_step(qtbot, qloop, tmp_path, engine, tiny_model_dir):  # noqa: F811
    """The slider far down with 20 steps: the window's own build_request, run by the real engine."""
    import numpy as np

    w = make_window(qtbot, tmp_path / "data", FakeEngine())
    try:
        source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        w.set_source_image(source)
        w.prompt_panel.set_mode("img2img")
        child(w, "stepsSpin").setValue(20)
        child(w, "promptEdit").setPlainText("x")
        for strength in (0.0, 0.02):
            w.timeline.set_strength(strength, "img2img")
            request = w.build_request().replace(model=str(tiny_model_dir), trajectory=False)
            assert getattr(request, "strength", None) == pytest.approx(strength, abs=1e-3)
            result = engine.run(request)
            assert result.images[0].size == (64, 64)
            if strength == 0.0:
                assert (np.asarray(result.images[0].convert("RGB")) == np.asarray(source)).all()
    finally:
        w.close()


@pytest.mark.parametrize("size", [(70, 70), (32, 64), (4032, 3024)])
def test_img2img_comes_back_at_the_sources_size(engine, tiny_model_dir, size):
    """70x70 is not stretched to 64x64, 32x64 keeps its shape, a phone photo is scaled to the model with a notice."""
    from desktop_app.core.events import Notice
    from desktop_app.core.requests import Img2ImgRequest

    notices: list[str] = []
    source = Image.new("RGB", size, (120, 60, 30))
    request = Img2ImgRequest(prompt="x", model=str(tiny_model_dir), image=source, steps=2, seed=1, trajectory=False)
    result = engine.run(request, lambda ev: notices.append(ev.message) if isinstance(ev, Notice) else None)
    assert result.images[0].size == size
    if size == (4032, 3024):
        assert any("4032x3024" in n and "scaled back" in n for n in notices), notices


def test_a_phone_photo_can_be_edited(engine, tiny_model_dir):
    from desktop_app.core.requests import EditRequest

    source = Image.new("RGB", (4032, 3024), (30, 60, 120))
    request = EditRequest(prompt="x", model=str(tiny_model_dir), image=source, steps=2, seed=1, trajectory=False)
    assert engine.run(request).images[0].size == (4032, 3024)
