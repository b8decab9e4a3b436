"""The models the app knows: remembered with family, hash and last use; a moved or deleted one shows as missing."""

from __future__ import annotations

import json

from desktop_app.core import paths
from desktop_app.core.model_registry import ModelRegistry


def test_loading_a_model_remembers_it_with_family_hash_and_last_use(engine, tiny_model_dir):
    engine.models.unload()
    loaded = engine.models.get(str(tiny_model_dir))
    known = ModelRegistry().get(str(tiny_model_dir))
    assert known is not None
    assert (known.kind, known.family, known.model_hash) == ("folder", "sd1", loaded.model_hash)
    assert known.last_used > 0 and not known.missing
    assert (paths.config_dir() / "models.json").is_file()


def test_a_deleted_model_is_listed_as_missing_not_a_crash(tmp_path):
    registry = ModelRegistry()
    gone = tmp_path / "gone.safetensors"
    gone.write_bytes(b"x")
    registry.add(str(gone), "single_file", family="sd1", model_hash="abc")
    registry.add("owner/repo", "hub", family="sdxl")
    gone.unlink()
    rows = {m.display_name: m for m in registry.all()}
    assert rows["gone.safetensors"].missing
    assert not rows["owner/repo"].missing  # hub models live in the hub cache
    assert [m.display_name for m in registry.missing()] == ["gone.safetensors"]
    assert registry.remove(str(gone)) and registry.get(str(gone)) is None


def test_touch_orders_by_last_use_and_keeps_known_fields(tmp_path):
    registry = ModelRegistry(tmp_path / "models.json")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    registry.add(str(a), "folder", family="sd2-v", model_hash="1111111111", name="Model A")
    registry.touch(str(b), kind="folder")
    registry.touch(str(a), kind="folder")
    rows = registry.all()
    assert [r.location for r in rows] == [str(a.resolve()), str(b.resolve())]
    assert rows[0].family == "sd2-v" and rows[0].name == "Model A" and rows[0].model_hash == "1111111111"


def test_a_damaged_registry_file_is_set_aside(tmp_path):
    path = tmp_path / "models.json"
    path.write_text("{not json")
    registry = ModelRegistry(path)
    assert registry.all() == []
    registry.add("owner/repo", "hub")
    assert json.loads(path.read_text())["models"][0]["location"] == "owner/repo"
    assert (tmp_path / "models.json.bad").is_file()
