"""Helpers shared by the history tests (no tests here): small results built by hand, no torch."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from PIL import Image

from desktop_app.core.events import Result
from desktop_app.core.requests import EditRequest, GenerateRequest, InpaintRequest


def image(color: str | tuple = "red", size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def generate_result(prompt: str = "a red cube on a table", n: int = 1, seed: int = 100, **kw) -> Result:
    request = GenerateRequest(
        prompt=prompt,
        negative_prompt=kw.pop("negative_prompt", "blurry"),
        steps=kw.pop("steps", 20),
        guidance=kw.pop("guidance", 7.0),
        width=64,
        height=64,
        seed=seed,
        batch=n,
        scheduler=kw.pop("scheduler", "dpmpp_2m"),
    )
    colors = ["red", "blue", "green", "yellow", "white", "black"]
    return Result(
        request=request,
        images=[image(colors[i % len(colors)]) for i in range(n)],
        seeds=[seed + i for i in range(n)],
        model_id="builtin",
        model_hash="0123456789",
        elapsed=1.25,
        info=kw.pop("info", {}),
    )


def edit_result(prompt: str = "a blue cube", source: Image.Image | None = None) -> Result:
    source = source or image("green")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (8, 8, 40, 40))
    request = EditRequest(
        prompt=prompt,
        image=source,
        mask=mask,
        source_prompt="a green cube, on: wood",
        t0=600,
        steps=10,
        guidance=5.0,
        width=64,
        height=64,
        seed=7,
        method="direct",
        strength=0.7,
    )
    return Result(request=request, images=[image("blue")], seeds=[7], model_id="builtin", model_hash="abc", elapsed=0.5)


def inpaint_result(prompt: str = "a hat") -> Result:
    source = image("gray")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, 32, 32))
    request = InpaintRequest(
        prompt=prompt, image=source, mask=mask, steps=10, guidance=6.0, width=64, height=64, seed=3
    )
    return Result(
        request=request, images=[image("purple")], seeds=[3], model_id="builtin", model_hash="abc", elapsed=0.4
    )


def assert_consistent(root: Path) -> int:
    """The crash-safety invariant: no temporary files, every row has a complete image, every image has a row."""
    root = Path(root)
    temps = list(root.rglob("*.tmp"))
    assert not temps, temps
    conn = sqlite3.connect(root / "history.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT uid, image_path FROM entries").fetchall()
    finally:
        conn.close()
    for uid, rel in rows:
        path = root / rel
        assert path.is_file(), f"row {uid} without its image"
        with Image.open(path) as img:
            img.load()  # a truncated PNG raises here
    images = {
        p.relative_to(root).as_posix()
        for p in (root / "images").rglob("*.png")
        if not p.name.startswith(("src-", "mask-"))
    }
    assert images == {rel for _, rel in rows}
    return len(rows)
