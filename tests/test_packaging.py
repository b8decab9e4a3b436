"""The launcher entry, the AppStream metadata, the icons and the build scripts: well-formed and consistent.

The external validators (desktop-file-validate from Debian's desktop-file-utils, appstreamcli
from appstream) run when installed; those tests skip, saying so, when they are not.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

import desktop_app

ROOT = Path(__file__).resolve().parents[1]
LINUX = ROOT / "packaging" / "linux"
APP_ID = "io.github.diffusiondesk.DiffusionDesk"
DESKTOP = LINUX / f"{APP_ID}.desktop"
METAINFO = LINUX / f"{APP_ID}.metainfo.xml"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian/Ubuntu: apt-get install {package})")
    return path


class _CaseSensitiveParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # keys are case-sensitive


def _desktop_entry() -> configparser.SectionProxy:
    parser = _CaseSensitiveParser(interpolation=None, strict=True)
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


# -- the .desktop file ---------------------------------------------------------------------------
def test_desktop_file_passes_desktop_file_validate():
    tool = _tool("desktop-file-validate", "desktop-file-utils")
    proc = subprocess.run([tool, str(DESKTOP)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def test_desktop_entry_opens_images_and_sits_under_graphics():
    entry = _desktop_entry()
    assert entry["Type"] == "Application" and entry["Name"] == "Diffusion Desk"
    assert entry["Exec"].split()[0] == "diffusion-desk" and "%F" in entry["Exec"].split()  # files given by "Open with"
    assert entry["Icon"] == APP_ID
    assert "Graphics" in entry["Categories"].split(";")
    assert {"image/png", "image/jpeg", "image/webp"} <= set(filter(None, entry["MimeType"].split(";")))
    assert entry.get("Terminal") == "false"


def test_desktop_exec_is_the_gui_entry_point():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["gui-scripts"]["diffusion-desk"] == "desktop_app.cli.main:main"
    assert _desktop_entry()["Exec"].split()[0] in project["gui-scripts"]


# -- AppStream -----------------------------------------------------------------------------------
def test_metainfo_passes_appstreamcli_validate():
    tool = _tool("appstreamcli", "appstream")
    proc = subprocess.run([tool, "validate", "--no-net", "--explain", str(METAINFO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metainfo_has_what_software_centres_show():
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == DESKTOP.name
    assert root.findtext("name") == "Diffusion Desk"
    assert root.findtext("developer_name")  # not <developer>: appstream 0.16's validator rejects it
    summary = root.findtext("summary")
    assert summary is not None and 10 < len(summary) < 80
    assert len(root.findall("description/p")) >= 1
    image = root.find("screenshots/screenshot[@type='default']/image")
    assert image is not None and image.text is not None
    assert image.text.startswith("https://") and image.text.endswith(".png")
    rating = root.find("content_rating")
    assert rating is not None and rating.get("type") == "oars-1.1"
    assert {m.text for m in root.findall("provides/mediatype")} == {"image/png", "image/jpeg", "image/webp"}


def test_newest_release_is_this_version():
    releases = ET.parse(METAINFO).getroot().findall("releases/release")
    assert releases, "no <release>"
    assert releases[0].get("version") == desktop_app.__version__, (
        "add a <release> to the metainfo when the version changes"
    )


# -- icons -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_hicolor_png_icons(size):
    path = LINUX / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (size, size) and img.mode == "RGBA"
        assert img.getchannel("A").getextrema() == (0, 255)  # rounded corners: transparent around, opaque inside


def test_scalable_icon_is_the_app_icon():
    svg = LINUX / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 512 512"
    assert svg.read_bytes() == (ROOT / "resources" / "icons" / "diffusion-desk.svg").read_bytes()


def test_window_icons_are_installed_package_data():
    icons = resources.files("desktop_app.resources").joinpath("icons")
    assert icons.joinpath("diffusion-desk.svg").is_file()
    for size in SIZES:
        assert icons.joinpath(f"diffusion-desk-{size}.png").is_file()


def test_qt_loads_the_icon(qapp):
    from PySide6.QtGui import QIcon

    icons = resources.files("desktop_app.resources").joinpath("icons")
    icon = QIcon()
    for size in SIZES:
        icon.addFile(str(icons.joinpath(f"diffusion-desk-{size}.png")))
    assert not icon.isNull() and icon.pixmap(48, 48).width() == 48


# -- scripts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script", ["packaging/linux/install.sh", "packaging/build_bundle.sh", "packaging/linux/render_icons.sh"]
)
def test_shell_scripts_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_pyinstaller_files_compile():
    for name in ("diffusion-desk.spec", "diffusion_desk_main.py"):
        path = ROOT / "packaging" / "pyinstaller" / name
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_smoke_module_is_what_the_cli_runs():
    from desktop_app.app.smoke import run_smoke

    assert callable(run_smoke)
    assert sys.modules["desktop_app.app.smoke"].DEFAULT_TIMEOUT > 0


def _smoke(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "DIFFUSION_DESK_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_smoke_makes_an_image_and_waits_for_the_history_saver(tmp_path):
    """`diffusion-desk --smoke` (the CLI's own path to run_smoke): one image on the canvas, then written to the
    history by the window's HistorySaver (saved(list) with one entry per image) before the data folder goes."""
    if not (ROOT / "desktop_app" / "resources" / "models" / "shapes" / "model_index.json").is_file():
        pytest.skip("the built-in model is not in this checkout")
    proc = _smoke("import sys; from desktop_app.cli.main import main; sys.exit(main(['--smoke']))", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "image on the canvas" in proc.stdout and "saved to the history (1 entry)" in proc.stdout, proc.stdout


def test_smoke_fails_when_the_history_cannot_save(tmp_path):
    """A write that fails reaches the smoke test through HistorySaver.failed(message, hint): exit 1, with why."""
    if not (ROOT / "desktop_app" / "resources" / "models" / "shapes" / "model_index.json").is_file():
        pytest.skip("the built-in model is not in this checkout")
    code = (
        "import sys\n"
        "from desktop_app.core import history\n"
        "from desktop_app.core.errors import UserError\n"
        "def add(self, *args, **kwargs):\n"
        "    raise UserError('The disk is full.', 'Free some space.')\n"
        "history.HistoryStore.add = add\n"
        "from desktop_app.app.smoke import run_smoke\n"
        "sys.exit(run_smoke())\n"
    )
    proc = _smoke(code, tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED: saving to the history: The disk is full. Free some space." in proc.stdout, proc.stdout
