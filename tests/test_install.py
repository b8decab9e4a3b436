"""Installing the app as a user would: the wheel in a fresh environment, and the per-user launcher install.

The fresh environment reuses the dependencies already installed in the environment running the
tests (torch and friends) through a .pth file, and the wheel goes in with --no-deps: the test checks
the package, its resources and its entry points, not PyPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import desktop_app

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SH = ROOT / "packaging" / "linux" / "install.sh"
APP_ID = "io.github.diffusiondesk.DiffusionDesk"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
BUILTIN_INDEX = "desktop_app/resources/models/shapes/model_index.json"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX layout of virtual environments and XDG folders")


def _clean_env(**extra: str) -> dict[str, str]:
    """An environment that does not leak this checkout or this venv into the child."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


# -- the wheel -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (no build/ or egg-info left in the checkout; links followed)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "desktop_app", src / "desktop_app", symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(work / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (work / "dist").glob("diffusion_desk-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed; dependencies come from this one through a .pth file."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # A plain path line: this venv's own .pth files (the editable install of the checkout) are not processed.
    (site / "zz_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def test_wheel_carries_the_resources_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "desktop_app/resources/__init__.py" in names
    assert "desktop_app/resources/icons/diffusion-desk.svg" in names
    assert {f"desktop_app/resources/icons/diffusion-desk-{s}.png" for s in SIZES} <= names
    assert not any("__pycache__" in n for n in names)
    assert "[gui_scripts]" in entry_points and "diffusion-desk = desktop_app.cli.main:main" in entry_points
    assert "[console_scripts]" in entry_points and "diffusion-desk-cli = desktop_app.cli.main:main" in entry_points


def test_wheel_carries_the_builtin_model(wheel):
    if not (ROOT / "resources" / "models" / "shapes" / "model_index.json").is_file():
        pytest.skip("the built-in model is not in this checkout yet (resources/models/shapes)")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert BUILTIN_INDEX in names
    assert any(n.startswith("desktop_app/resources/models/shapes/unet/") and n.endswith(".safetensors") for n in names)


def test_installed_package_comes_from_the_wheel_not_the_checkout(fresh_venv, tmp_path):
    code = "import desktop_app, desktop_app.core.modelinfo as m; print(desktop_app.__file__); print(m.builtin_model_path())"
    proc = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    module_file, model_path = proc.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(fresh_venv) and not Path(module_file).is_relative_to(ROOT)
    assert Path(model_path).is_relative_to(fresh_venv)


@pytest.mark.parametrize("command", ["diffusion-desk-cli", "diffusion-desk"])
def test_installed_commands_print_the_version(fresh_venv, tmp_path, command):
    proc = subprocess.run(
        [str(fresh_venv / "bin" / command), "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"diffusion-desk {desktop_app.__version__}"


@pytest.mark.slow
def test_installed_app_passes_the_smoke_test(fresh_venv, tmp_path, tiny_model_dir):
    """`diffusion-desk-cli --smoke` from another folder: the real window, offscreen, makes an image with the
    built-in model. Until the model ships, the installed desktop_app.app.smoke runs with the tiny test model."""
    env = _clean_env(DIFFUSION_DESK_DATA_DIR=str(tmp_path / "data"))
    if (ROOT / "resources" / "models" / "shapes" / "model_index.json").is_file():
        command = [str(fresh_venv / "bin" / "diffusion-desk-cli"), "--smoke"]
    else:
        code = f"import sys; from desktop_app.app.smoke import run_smoke; sys.exit(run_smoke(model={str(tiny_model_dir)!r}))"
        command = [str(fresh_venv / "bin" / "python"), "-c", code]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok" in proc.stdout.lower()


# -- packaging/linux/install.sh ---------------------------------------------------------------------------
def _run_install(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = _clean_env(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_BIN_HOME=str(home / "bin"), **env)
    return subprocess.run(["bash", str(INSTALL_SH), *args], env=e, capture_output=True, text=True, timeout=900)


def _tree(path: Path) -> dict[str, bytes]:
    skip = ("mimeinfo.cache", "icon-theme.cache")
    return {
        str(p.relative_to(path)): (p.read_bytes() if not p.is_symlink() else os.readlink(p).encode())
        for p in sorted(path.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.name not in skip
    }


def test_install_script_registers_launcher_and_icons_idempotently_and_uninstalls(tmp_path):
    home = tmp_path / "home"
    venv = Path(sys.prefix)  # the environment running the tests already has the app: no pip
    first = _run_install(home, "--venv", str(venv), "--no-pip")
    assert first.returncode == 0, first.stdout + first.stderr
    data = home / "data"
    desktop = data / "applications" / f"{APP_ID}.desktop"
    text = desktop.read_text(encoding="utf-8")
    exe = str(venv.resolve() / "bin" / "diffusion-desk")
    assert f'Exec="{exe}" %F' in text and f"TryExec={exe}" in text  # works without ~/.local/bin on PATH
    for size in SIZES:
        assert (data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png").is_file()
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg").is_file()
    assert (data / "metainfo" / f"{APP_ID}.metainfo.xml").is_file()
    assert os.readlink(home / "bin" / "diffusion-desk") == exe
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    if shutil.which("update-desktop-database"):
        assert f"image/png={APP_ID}.desktop" in (data / "applications" / "mimeinfo.cache").read_text()
    version = subprocess.run(
        [str(home / "bin" / "diffusion-desk-cli"), "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.stdout.strip() == f"diffusion-desk {desktop_app.__version__}"

    before = _tree(home)
    again = _run_install(home, "--venv", str(venv), "--no-pip")
    assert again.returncode == 0, again.stderr
    assert _tree(home) == before  # idempotent: same files, same content, nothing doubled

    gone = _run_install(home, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert _tree(home) == {}, "uninstall left files behind"
    assert venv.is_dir() and (venv / "bin" / "python").exists()  # an environment it did not create stays


def test_install_script_refuses_an_environment_without_the_app(tmp_path):
    proc = _run_install(tmp_path / "home", "--venv", str(tmp_path / "nothing-here"), "--no-pip")
    assert proc.returncode != 0
    assert not (tmp_path / "home" / "data" / "applications" / f"{APP_ID}.desktop").exists()


@pytest.mark.slow
def test_install_script_installs_a_wheel_into_an_environment(wheel, tmp_path):
    """The pip half of install.sh, with the wheel and without network (--no-deps, deps reused through a .pth)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz_reuse_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )  # torch, pip, ...
    home = tmp_path / "home"
    proc = _run_install(home, "--venv", str(venv), "--wheel", str(wheel), PIP_ARGS="--no-deps --no-index")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "desktop_app" / "__init__.py").is_file()
    out = subprocess.run(
        [str(home / "bin" / "diffusion-desk-cli"), "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == f"diffusion-desk {desktop_app.__version__}"
    assert _run_install(home, "--uninstall").returncode == 0
    assert venv.is_dir()  # it was there before the install


def test_install_script_registers_an_unpacked_bundle(tmp_path):
    """The bundle ships linux/install.sh next to its program; run from there it registers that program."""
    bundle = tmp_path / "diffusion-desk"
    (bundle / "_internal").mkdir(parents=True)
    program = bundle / "diffusion-desk"
    program.write_text(f"#!/bin/sh\necho diffusion-desk {desktop_app.__version__}\n", encoding="utf-8")
    program.chmod(0o755)
    shutil.copytree(INSTALL_SH.parent, bundle / "linux", ignore=shutil.ignore_patterns("render_icons.sh"))
    home = tmp_path / "home"
    e = _clean_env(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_BIN_HOME=str(home / "bin"))
    proc = subprocess.run(
        ["bash", str(bundle / "linux" / "install.sh")], env=e, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (home / "data" / "applications" / f"{APP_ID}.desktop").read_text(encoding="utf-8")
    assert f'Exec="{program}" %F' in text
    assert os.readlink(home / "bin" / "diffusion-desk") == str(program)
    assert f"{desktop_app.__version__} installed" in proc.stdout
    proc = subprocess.run(
        ["bash", str(bundle / "linux" / "install.sh"), "--uninstall"],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and _tree(home) == {}
    assert program.is_file()  # the bundle itself is the user's to delete
