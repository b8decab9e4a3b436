"""Defect 5 on a real X display: the first window fits a 1366x768 screen at scale factors 1 and 1.5, and every
control (Generate included, in every mode) lies on the screen, uncovered by a tool bar's overflow chevron."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_app_real import xvfb  # noqa: F401  (a fixture)

PROBE = textwrap.dedent(
    """
    import json, sys
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtWidgets import QAbstractButton, QApplication, QLabel, QSlider, QToolBar, QToolButton
    from PIL import Image
    app = QApplication(sys.argv[:1])
    from desktop_app.app.wiring import create_main_window
    w = create_main_window(data_dir=sys.argv[1])
    w.show()
    for _ in range(20):
        app.processEvents()
    screen = w.screen().availableGeometry()
    out = {"screen": [screen.width(), screen.height()], "frame": list(w.frameGeometry().getRect()), "off": []}
    w.set_source_image(Image.new("RGB", (64, 64)))
    for mode in ("generate", "img2img", "inpaint", "edit"):
        w.prompt_panel.set_mode(mode)
        for _ in range(10):
            app.processEvents()
        for name in ("generateButton", "cancelButton", "timestepSlider", "modeSelector", "modelPicker", "strengthSpin"):
            widget = w.findChild(QAbstractButton, name) or w.findChild(QSlider, name) or w.findChild(object, name)
            if widget is None or not widget.isVisible():
                if not (name == "strengthSpin" and mode == "generate"):
                    out["off"].append(f"{mode}: {name} hidden")
                continue
            top_left = widget.mapToGlobal(QPoint(0, 0))
            rect = QRect(top_left, widget.size())
            if not screen.contains(rect):
                out["off"].append(f"{mode}: {name} at {rect.getRect()} is off the screen {screen.getRect()}")
        for bar in w.findChildren(QToolBar):
            ext = bar.findChild(QToolButton, "qt_toolbar_ext_button")
            if ext is not None and ext.isVisible():
                out["off"].append(f"{mode}: {bar.objectName()} overflows")
    out["slider"] = w.findChild(QSlider, "timestepSlider").width()
    # after a run the slider scrubs its steps: the row gains the x0 / xt toggle and must still fit
    import numpy as np
    from desktop_app.core.events import Result
    from desktop_app.core.latents import Trajectory
    from desktop_app.core.requests import GenerateRequest
    steps = [np.zeros((1, 4, 8, 8), np.float32)] * 150
    traj = Trajectory(timesteps=list(range(999, 849, -1)), xt=steps, x0=steps)
    w.show_result(Result(request=GenerateRequest(seed=1), images=[Image.new("RGB", (64, 64))], seeds=[1], trajectory=traj))
    for _ in range(10):
        app.processEvents()
    slider = w.findChild(QSlider, "timestepSlider")
    label = w.findChild(QLabel, "timestepLabel")
    out["trajectory_slider"] = slider.width()
    out["label_cut"] = label.width() < label.sizeHint().width()
    out["overlap"] = slider.geometry().intersects(label.geometry())
    print("PROBE", json.dumps(out))
    w.close()
    """
)


@pytest.mark.parametrize("scale", ["1", "1.5"])
def test_the_window_fits_a_1366x768_screen(tmp_path, xvfb, scale):  # noqa: F811
    env = {**os.environ, "DISPLAY": xvfb, "QT_QPA_PLATFORM": "xcb", "QT_SCALE_FACTOR": scale}
    env.pop("DIFFUSION_DESK_DATA_DIR", None)
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=90
    )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line is not None, run.stderr[-3000:]
    probe = json.loads(line[6:])
    sw, sh = probe["screen"]
    x, y, fw, fh = probe["frame"]
    assert x >= 0 and y >= 0 and x + fw <= sw and y + fh <= sh, f"window {probe['frame']} on a {sw}x{sh} screen"
    assert probe["off"] == []
    assert probe["slider"] >= 150
    assert probe["trajectory_slider"] >= 150 and not probe["label_cut"] and not probe["overlap"]


def _probe(tmp_path, xvfb, scale: str, code: str) -> dict:  # noqa: F811
    env = {**os.environ, "DISPLAY": xvfb, "QT_QPA_PLATFORM": "xcb", "QT_SCALE_FACTOR": scale}
    env.pop("DIFFUSION_DESK_DATA_DIR", None)
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=90
    )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line is not None, run.stderr[-3000:]
    return json.loads(line[6:])


DIALOG_PROBE = textwrap.dedent(
    """
    import json, sys
    from PySide6.QtCore import QPoint, QRect, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication, QDialog, QDialogButtonBox, QFileDialog, QPushButton, QScrollArea
    app = QApplication(sys.argv[:1])
    browsed = []
    QFileDialog.getExistingDirectory = staticmethod(lambda *a, **k: browsed.append("folder") or "")
    QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: browsed.append("file") or ("", ""))
    from desktop_app.app.wiring import create_main_window
    from desktop_app.ui.models_dialog import ModelsDialog
    w = create_main_window(data_dir=sys.argv[1])
    w.show()
    dlg = ModelsDialog(w.models, w)
    dlg.show()
    for _ in range(20):
        app.processEvents()
    screen = dlg.screen().availableGeometry()
    def rect(widget):
        return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())
    out = {"screen": [screen.width(), screen.height()], "frame": list(dlg.frameGeometry().getRect()), "off": []}
    scroll = dlg.findChild(QScrollArea)
    viewport = rect(scroll.viewport()) if scroll is not None else screen
    for button in dlg.findChildren(QPushButton):
        if not button.isVisible():
            continue
        if scroll is not None and scroll.isAncestorOf(button):
            scroll.ensureWidgetVisible(button)  # reachable by scrolling the body
            for _ in range(5):
                app.processEvents()
            if not viewport.contains(rect(button)):
                out["off"].append(f"{button.text()} at {rect(button).getRect()} outside the body {viewport.getRect()}")
        if not screen.contains(rect(button)):
            out["off"].append(f"{button.text()} at {rect(button).getRect()} is off the screen {screen.getRect()}")
    ok = dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    out["ok_default"] = ok.isDefault()
    out["auto_default"] = [b.text() for b in dlg.findChildren(QPushButton) if b.autoDefault() and b is not ok]
    add = dlg.findChild(QPushButton, "addModelFolderButton")
    add.setFocus()
    for _ in range(5):
        app.processEvents()
    QTest.keyClick(add, Qt.Key.Key_Return)  # the focus on "Add diffusers folder…": Enter is still OK
    for _ in range(5):
        app.processEvents()
    out["browsed"] = browsed
    out["result"] = "accepted" if dlg.result() == QDialog.DialogCode.Accepted else "not accepted"
    out["visible"] = dlg.isVisible()
    print("PROBE", json.dumps(out))
    w.close()
    """
)


@pytest.mark.parametrize("scale", ["1", "1.5"])
def test_the_models_dialog_fits_a_1366x768_screen_and_enter_is_ok(tmp_path, xvfb, scale):  # noqa: F811
    """At 1.5 the dialog was taller than the screen: OK / Cancel could not be reached, and Enter clicked "Add
    diffusers folder…" again, which had kept the focus."""
    probe = _probe(tmp_path, xvfb, scale, DIALOG_PROBE)
    sw, sh = probe["screen"]
    x, y, fw, fh = probe["frame"]
    assert x >= 0 and y >= 0 and x + fw <= sw and y + fh <= sh, f"dialog {probe['frame']} on a {sw}x{sh} screen"
    assert probe["off"] == []
    assert probe["ok_default"] and probe["auto_default"] == []
    assert probe["browsed"] == [] and probe["result"] == "accepted" and not probe["visible"]


HISTORY_PROBE = textwrap.dedent(
    """
    import json, sys
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QApplication
    from PIL import Image
    app = QApplication(sys.argv[:1])
    from desktop_app.app.wiring import create_main_window
    from desktop_app.core.events import Result
    from desktop_app.core.requests import GenerateRequest
    w = create_main_window(data_dir=sys.argv[1])
    for seed in range(6):
        request = GenerateRequest(prompt=f"square {seed}", seed=seed, width=64, height=64)
        w.history.add(Result(request=request, images=[Image.new("RGB", (64, 64), (220, 20, 20))], seeds=[seed]))
    w.show()
    panel = w.history_panel
    panel.refresh()
    view = panel.view
    for _ in range(20):
        app.processEvents()
    import time
    deadline = time.monotonic() + 10
    while len(panel.model._thumbs) < min(3, panel.model.rowCount()) and time.monotonic() < deadline:
        for row in range(panel.model.rowCount()):
            panel.model.data(panel.model.index(row), Qt.ItemDataRole.DecorationRole)
        app.processEvents()
        time.sleep(0.02)
    view.viewport().update()
    for _ in range(10):
        app.processEvents()
    grab = view.viewport().grab().toImage()
    ratio = grab.devicePixelRatio()
    width = view.viewport().width()
    out = {"rows": panel.model.rowCount(), "hbar": view.horizontalScrollBar().isVisible(), "cells": []}
    red = QColor(220, 20, 20)
    for row in range(panel.model.rowCount()):
        cell = view.visualRect(panel.model.index(row))
        if cell.bottom() >= view.viewport().height():
            continue  # only partly scrolled into view
        xs, ys = [], []
        for y in range(max(cell.top(), 0), min(cell.bottom(), view.viewport().height() - 1)):
            for x in range(max(cell.left(), 0), min(cell.right() + 1, width)):
                c = grab.pixelColor(int(x * ratio), int(y * ratio))
                if abs(c.red() - red.red()) + abs(c.green() - red.green()) + abs(c.blue() - red.blue()) < 40:
                    xs.append(x)
                    ys.append(y)
        box = [min(xs), min(ys), max(xs), max(ys)] if xs else None
        out["cells"].append({"cell": list(cell.getRect()), "box": box})
    out["viewport"] = width
    print("PROBE", json.dumps(out))
    w.close()
    """
)


@pytest.mark.parametrize("scale", ["1", "1.5"])
def test_the_history_thumbnails_fit_the_panel(tmp_path, xvfb, scale):  # noqa: F811
    """At 1.5 the history grid scrolled sideways and cut its thumbnails at the right edge: every cell now lies
    within the list's width and shows its whole (square) thumbnail."""
    probe = _probe(tmp_path, xvfb, scale, HISTORY_PROBE)
    assert probe["rows"] == 6 and not probe["hbar"]
    assert probe["cells"], probe
    for shown in probe["cells"]:
        x, _y, w, _h = shown["cell"]
        assert x >= 0 and x + w <= probe["viewport"], (shown, probe["viewport"])
        assert shown["box"] is not None, shown
        left, top, right, bottom = shown["box"]
        side_x, side_y = right - left + 1, bottom - top + 1
        assert side_x >= 60 and abs(side_x - side_y) <= 2, shown  # the whole square, not its left part
        assert right < probe["viewport"] - 1, shown
