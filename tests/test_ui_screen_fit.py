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
