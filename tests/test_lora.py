"""LoRAs: diffusers and kohya layouts, a weight each, added and removed without reloading the base model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from desktop_app.core.errors import ModelError
from desktop_app.core.requests import GenerateRequest
from desktop_app.engine.lora import LoraSpec, adapter_name, apply_loras

pytest.importorskip("peft")


def _peft_layers(pipe, seed: int, text_encoder: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Random (non-zero) LoRA layers on the UNet (and text encoder), as a diffusers-layout state dict."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config, adapter_name="make")
    unet = {k: v * 4 for k, v in get_peft_model_state_dict(pipe.unet, adapter_name="make").items()}
    te = None
    if text_encoder:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(
            LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
            pipe.text_encoder,
            adapter_name="make",
        )
        te = get_peft_model_state_dict(pipe.text_encoder, adapter_name="make")
    return unet, te


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, tiny_model_dir):
    """A diffusers-layout and a kohya-layout LoRA for the tiny SD 1.x model."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("loras")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    unet, te = _peft_layers(pipe, 1, text_encoder=True)
    assert te is not None
    StableDiffusionPipeline.save_lora_weights(
        str(root), unet_lora_layers=unet, text_encoder_lora_layers=te, weight_name="style_diffusers.safetensors"
    )
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    unet, _ = _peft_layers(pipe, 2)
    kohya = {}
    for key, value in unet.items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = value.contiguous()
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(kohya, str(root / "style_kohya.safetensors"), metadata={"ss_network_module": "networks.lora"})
    return root / "style_diffusers.safetensors", root / "style_kohya.safetensors"


def _image(engine, model, seed=3, loras=()):
    """The request names its LoRAs; the engine applies exactly those (and removes any others)."""
    result = engine.run(
        GenerateRequest(
            prompt="a red circle", model=str(model), seed=seed, steps=2, loras=tuple((str(p), w) for p, w in loras)
        )
    )
    return np.asarray(result.images[0]).astype(np.int16)


def test_lora_changes_the_image_and_removing_it_restores_it_exactly(engine, tiny_model_dir, lora_files):
    diffusers_lora, kohya_lora = lora_files
    base = _image(engine, tiny_model_dir)
    loaded = engine.models.loaded
    loads = engine.models.loads
    info = apply_loras(loaded, [LoraSpec(str(diffusers_lora), 1.0)])
    assert "Lora hashes" in info and "style_diffusers" in info["Loras"]
    assert any("lora" in name for name, _ in loaded.pipe.text_encoder.named_modules())  # its text-encoder part too
    full = _image(engine, tiny_model_dir, loras=[(diffusers_lora, 1.0)])
    assert np.abs(full - base).mean() > 0.5
    weak = _image(engine, tiny_model_dir, loras=[(diffusers_lora, 0.3)])
    assert 0 < np.abs(weak - base).mean() < np.abs(full - base).mean()
    both = _image(engine, tiny_model_dir, loras=[(diffusers_lora, 1.0), (kohya_lora, 0.8)])
    assert not np.array_equal(both, full)
    assert set(loaded.loras) == {adapter_name(diffusers_lora), adapter_name(kohya_lora)}
    assert np.array_equal(_image(engine, tiny_model_dir), base)  # a request without LoRAs removes them
    assert loaded.loras == {}
    assert engine.models.loads == loads  # never reloaded


def test_kohya_layout_loads_alone(engine, tiny_model_dir, lora_files):
    _, kohya_lora = lora_files
    base = _image(engine, tiny_model_dir, seed=5)
    assert LoraSpec.parse(str(kohya_lora) + ":1.0").weight == 1.0
    assert not np.array_equal(_image(engine, tiny_model_dir, seed=5, loras=[(kohya_lora, 1.0)]), base)


def test_lora_for_another_family_or_pickle_is_refused(engine, tiny_model_dir, lora_files, tmp_path):
    from safetensors.torch import save_file

    engine.models.get(str(tiny_model_dir))
    loaded = engine.models.loaded
    xl = tmp_path / "xl_lora.safetensors"
    save_file({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 1280)}, str(xl))
    with pytest.raises(ModelError, match="SDXL"):
        apply_loras(loaded, [LoraSpec(str(xl))])
    wide = tmp_path / "sd2_lora.safetensors"
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 1024)},
        str(wide),
    )
    with pytest.raises(ModelError, match="SD 2"):
        apply_loras(loaded, [LoraSpec(str(wide))])
    pickle = tmp_path / "old_lora.pt"
    torch.save({"x": torch.zeros(1)}, pickle)
    with pytest.raises(ModelError, match="pickle"):
        apply_loras(loaded, [LoraSpec(str(pickle))])
    assert loaded.loras == {}
    assert _image(engine, tiny_model_dir).shape == (64, 64, 3)  # the model still works


def test_spec_parsing():
    assert LoraSpec.parse("/a/b/style.safetensors:0.7") == LoraSpec("/a/b/style.safetensors", 0.7)
    assert LoraSpec.parse("C:/loras/x.safetensors") == LoraSpec("C:/loras/x.safetensors", 1.0)
    assert LoraSpec.parse("x.safetensors").name == "x"


def test_sdxl_lora_applies_to_every_mode(engine, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from test_models_tiny import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "xl")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    unet, _ = _peft_layers(pipe, 3)
    StableDiffusionXLPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=unet, weight_name="xl_style.safetensors"
    )
    base = _image(engine, folder)
    loaded = engine.models.loaded
    assert not np.array_equal(_image(engine, folder, loras=[(tmp_path / "xl_style.safetensors", 1.0)]), base)
    assert loaded.pipeline("img2img").unet is loaded.pipe.unet
    assert np.array_equal(_image(engine, folder), base)


def test_kohya_sd15_lora_with_te1_keys_as_diffusers_converts_it_loads(engine, tiny_model_dir, tmp_path):
    """diffusers' own PEFT -> kohya converter writes an SD 1.5 text encoder as `lora_te1_`: refused as SDXL before."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    unet, _ = _peft_layers(pipe, 4)
    targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    ]  # as kohya trains them (diffusers infers the layout by out_proj)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, pipe.text_encoder, adapter_name="make")
    te = get_peft_model_state_dict(pipe.text_encoder, adapter_name="make")
    state = {f"unet.{k}": v for k, v in unet.items()} | {f"text_encoder.{k}": v for k, v in te.items()}
    # real kohya files name CLIP's layers text_model_encoder_*; recent transformers flatten `text_model` away
    kohya = {
        k.replace("lora_te1_encoder_", "lora_te1_text_model_encoder_"): v.contiguous()
        for k, v in convert_state_dict_to_kohya(state).items()
    }
    assert any(k.startswith("lora_te1_") for k in kohya) and not any(k.startswith("lora_te2_") for k in kohya)
    path = tmp_path / "sd15_te1.safetensors"
    save_file(kohya, str(path))
    base = _image(engine, tiny_model_dir, seed=6)
    assert not np.array_equal(_image(engine, tiny_model_dir, seed=6, loras=[(path, 1.0)]), base)
    assert np.array_equal(_image(engine, tiny_model_dir, seed=6), base)


def _fake_loaded(width: int, is_xl: bool, family: str):
    from types import SimpleNamespace

    unet = SimpleNamespace(config=SimpleNamespace(cross_attention_dim=width))
    return SimpleNamespace(pipe=SimpleNamespace(unet=unet), is_xl=is_xl, family=family, model_id=family)


@pytest.mark.parametrize(
    ("shapes", "width", "is_xl", "match"),
    [
        # full-size kohya layouts on full-size models (no weights needed: the check reads shapes only)
        ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, 768, False, None),
        (
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
            },
            768,
            False,
            None,
        ),
        (
            {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)},
            768,
            False,
            "SDXL",
        ),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)}, 2048, True, None),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1024)}, 768, False, "SD 2"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768)}, 2048, True, "is SDXL"),
    ],
)
def test_family_check_by_widths_and_blocks(shapes, width, is_xl, match):
    from desktop_app.engine.lora import check_compatible

    loaded: Any = _fake_loaded(width, is_xl, "sdxl" if is_xl else "sd1")
    if match is None:
        check_compatible(shapes, loaded, "x.safetensors")
    else:
        with pytest.raises(ModelError, match=match):
            check_compatible(shapes, loaded, "x.safetensors")


def test_lora_hashes_are_a1111s(engine, tiny_model_dir, lora_files):
    from desktop_app.core.loras import lora_hash

    diffusers_lora, kohya_lora = lora_files
    engine.models.get(str(tiny_model_dir))
    info = apply_loras(engine.models.loaded, [(str(diffusers_lora), 0.5), (str(kohya_lora), 1.0)])
    assert info["Lora hashes"] == f"style_diffusers: {lora_hash(diffusers_lora)}, style_kohya: {lora_hash(kohya_lora)}"
    apply_loras(engine.models.loaded, [])
