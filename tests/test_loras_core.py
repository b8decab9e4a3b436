"""LoRA files read without torch: the family from key names and shapes, A1111's hash, the folder's list."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from desktop_app.core.errors import ModelError
from desktop_app.core.loras import family_from_shapes, find_lora, lora_family, lora_hash, read_header, scan_loras


def _save(path, shapes: dict[str, tuple[int, ...]], metadata=None, seed=0):
    rng = np.random.default_rng(seed)
    save_file({k: rng.standard_normal(s).astype(np.float16) for k, s in shapes.items()}, str(path), metadata)
    return path


def kohya_sd15(te_prefix="lora_te_"):
    """What kohya's trainer (te_prefix "lora_te_") and diffusers' own converter ("lora_te1_") write for SD 1.5."""
    out = {}
    for block in ("down_blocks_0_attentions_0", "up_blocks_3_attentions_2"):
        base = f"lora_unet_{block}_transformer_blocks_0_attn2_to_k"
        out[f"{base}.lora_down.weight"] = (4, 768)
        out[f"{base}.lora_up.weight"] = (320, 4)
        out[f"{base}.alpha"] = ()
    te = f"{te_prefix}text_model_encoder_layers_0_self_attn_q_proj"
    out[f"{te}.lora_down.weight"] = (4, 768)
    out[f"{te}.lora_up.weight"] = (768, 4)
    return out


def kohya_sdxl(text_encoders=True):
    out = {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight": (4, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_up.weight": (640, 4),
    }
    if text_encoders:
        out["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (4, 768)
        out["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (4, 1280)
    return out


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        (kohya_sd15("lora_te_"), "sd1"),
        (kohya_sd15("lora_te1_"), "sd1"),  # refused as SDXL before: the prefix is not the family
        (kohya_sdxl(), "sdxl"),
        (kohya_sdxl(text_encoders=False), "sdxl"),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 1024)}, "sd2"),
        # PEFT layout, SDXL UNet self-attention only: no width to go by, but SDXL's blocks
        ({"unet.up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight": (4, 1280)}, "sdxl"),
        ({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 768)}, "sd1"),
        ({"text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1280)}, "sdxl"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1024)}, "sd2"),
        ({"something_else.weight": (3, 3)}, "unknown"),
    ],
)
def test_family_from_keys_and_shapes(tmp_path, shapes, family):
    assert family_from_shapes(shapes)[0] == family
    assert lora_family(_save(tmp_path / "x.safetensors", shapes)) == family


def test_hash_is_a1111s_addnet_hash_of_the_tensor_data(tmp_path):
    a = _save(tmp_path / "a.safetensors", kohya_sd15(), {"ss_output_name": "a"})
    b = _save(tmp_path / "b.safetensors", kohya_sd15(), {"ss_output_name": "a much longer name", "x": "y"})
    raw = a.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert lora_hash(a) == hashlib.sha256(raw[8 + n :]).hexdigest()[:12]
    assert lora_hash(a) != hashlib.sha256(raw).hexdigest()[:12]  # not the whole file's
    assert lora_hash(b) == lora_hash(a)  # the same tensors under other metadata: the same LoRA to Civitai
    assert lora_hash(_save(tmp_path / "c.safetensors", kohya_sd15(), seed=1)) != lora_hash(a)
    assert len(lora_hash(a)) == 12


def test_scan_lists_the_folder_sorted_with_unreadable_ones(tmp_path):
    _save(tmp_path / "Zebra.safetensors", kohya_sdxl())
    (tmp_path / "styles").mkdir()
    _save(tmp_path / "styles" / "apple.safetensors", kohya_sd15("lora_te1_"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 4)
    (tmp_path / "notes.txt").write_text("not a lora")
    rows = scan_loras(tmp_path)
    assert [(r.name, r.family) for r in rows] == [("apple", "sd1"), ("broken", "unknown"), ("Zebra", "sdxl")]
    assert "too short" in rows[1].reason and rows[1].hash == ""
    assert rows[0].hash == lora_hash(rows[0].path) and rows[0].family_name == "SD 1.x"
    assert scan_loras(tmp_path / "missing") == []


def test_find_lora_by_name_and_missing_names_the_folder(tmp_path):
    path = _save(tmp_path / "Shapes_v2.safetensors", kohya_sd15())
    assert find_lora("Shapes_v2", tmp_path) == path
    assert find_lora("shapes_v2", tmp_path) == path
    with pytest.raises(ModelError) as err:
        find_lora("shapes_v3", tmp_path)
    assert str(tmp_path) in err.value.message and "Shapes_v2" in err.value.hint
    (tmp_path / "old.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"\.pt file"):
        find_lora("old", tmp_path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "too short"),
        (struct.pack("<Q", 10) + b"{}", "cut short"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a table"),
        (struct.pack("<Q", 2**40), "header"),
    ],
)
def test_damaged_headers_say_what_is_wrong(tmp_path, content, why):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=why):
        read_header(path)


def test_header_reads_metadata(tmp_path):
    path = _save(tmp_path / "m.safetensors", kohya_sd15(), {"ss_output_name": "nice"})
    length, shapes, meta = read_header(path)
    assert (
        meta == {"ss_output_name": "nice"}
        and shapes["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha"] == ()
    )
    assert json.loads(path.read_bytes()[8 : 8 + length])["__metadata__"] == meta
