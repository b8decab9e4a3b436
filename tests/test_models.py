"""Real model forms, offline: diffusers folders and single files of SD 1.x, SD 2.x-v and SDXL (tiny, random),
family detection, generate / img2img / inpaint on each, pickle refusal, unsupported families, stable hashes."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image
from test_models_tiny import build_family, save_single_file

from desktop_app.core.errors import ModelError
from desktop_app.core.requests import GenerateRequest, Img2ImgRequest, InpaintRequest
from desktop_app.engine import checkpoints
from desktop_app.engine.models import ModelSource, load_single_file, short_hash

FAMILIES = ["sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-inpaint"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Tiny models per family: root/<family> (diffusers folder, also the family's config folder) and root/<family>.safetensors."""
    root = tmp_path_factory.mktemp("zoo")
    old = os.environ.get(checkpoints.CONFIGS_ENV)
    os.environ[checkpoints.CONFIGS_ENV] = str(root)
    files = {}
    for family in FAMILIES:
        folder = build_family(root, family)
        metadata = {"modelspec.prediction_type": "v"} if family == "sd2-v" else {}
        files[family] = save_single_file(folder, root / f"tiny-{family}.safetensors", metadata)
    yield root, files
    if old is None:
        os.environ.pop(checkpoints.CONFIGS_ENV, None)
    else:
        os.environ[checkpoints.CONFIGS_ENV] = old


@pytest.fixture(scope="module")
def source_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    return mask


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_the_header_alone(zoo, family):
    _, files = zoo
    detection = checkpoints.detect_file(files[family])
    assert detection.family == family
    assert detection.in_channels == (9 if family.endswith("inpaint") else 4)
    assert detection.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_offline_with_the_same_weights_as_the_folder(zoo, family, monkeypatch):
    import diffusers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, files = zoo
    pipe, detection = load_single_file(files[family], torch.float32)
    reference = getattr(diffusers, type(pipe).__name__).from_pretrained(str(root / family), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(reference, name, None) is None:
            continue
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert pipe.scheduler.config.prediction_type == detection.prediction_type


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("form", ["folder", "single_file"])
def test_generate_img2img_and_inpaint_run_on_each_form(engine, zoo, family, form, source_image):
    root, files = zoo
    model = str(root / family) if form == "folder" else str(files[family])
    result = engine.run(GenerateRequest(prompt="a red square", model=model, seed=1, steps=2, width=64, height=64))
    loaded = engine.models.loaded
    assert result.images[0].size == (64, 64)
    assert loaded.family == family
    assert loaded.is_xl == family.startswith("sdxl")
    assert loaded.pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    loads = engine.models.loads
    img = engine.run(Img2ImgRequest(prompt="x", model=model, image=source_image, strength=0.5, seed=1, steps=2))
    inp = engine.run(InpaintRequest(prompt="x", model=model, image=source_image, mask=_mask(), seed=1, steps=2))
    assert engine.models.loads == loads  # one load serves every mode
    assert img.images[0].size == inp.images[0].size == (64, 64)
    if loaded.inpaint_unet:
        assert type(loaded.pipeline("generate")).__name__.endswith("InpaintPipeline")
    from diffusers.image_processor import VaeImageProcessor

    outside = np.asarray(VaeImageProcessor.blur(_mask(), 4)) == 0  # away from the mask and its feather
    assert np.array_equal(np.asarray(inp.images[0])[outside], np.asarray(source_image)[outside])


def test_v_prediction_x0_follows_the_v_formula(engine, zoo):
    root, _ = zoo
    result = engine.run(
        GenerateRequest(prompt="x", model=str(root / "sd2-v"), seed=4, steps=2, width=64, height=64, scheduler="ddim")
    )
    traj = result.trajectory
    sched = engine.models.loaded.pipe.scheduler
    # DDIM's own x0 for v-prediction: sqrt(a) x_t - sqrt(1-a) v; ours is recorded from the scheduler step
    assert sched.config.prediction_type == "v_prediction"
    assert len(traj) == 2 and np.isfinite(traj.x0[-1]).all()


def test_sd2_epsilon_and_v_told_apart_by_metadata_sidecar_or_name(zoo, tmp_path):
    root, files = zoo
    shapes, _ = checkpoints.read_header(files["sd2-v"])
    assert checkpoints.detect_family(shapes, {"modelspec.prediction_type": "epsilon"}).family == "sd2"
    assert checkpoints.detect_family(shapes, {"ss_v_parameterization": "True"}).family == "sd2-v"
    assert checkpoints.detect_family(shapes, {}, "v2-1_512-base-ema.safetensors").family == "sd2"
    assert checkpoints.detect_family(shapes, {}, "v2-1_768-ema-pruned.safetensors").prediction_known is False
    sidecar = tmp_path / "custom.safetensors"
    sidecar.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert checkpoints.detect_family(shapes, {}, str(sidecar)).family == "sd2-v"


def test_pickle_checkpoint_is_refused_without_opt_in_and_read_as_tensors_only_with_it(zoo, tmp_path):
    from safetensors.torch import load_file

    _, files = zoo
    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": load_file(files["sd1"])}, ckpt)
    assert ModelSource.parse(str(ckpt)).kind == "single_file"
    with pytest.raises(ModelError, match="pickle") as info:
        load_single_file(ckpt, torch.float32)
    assert "weights_only" in info.value.hint or "allow" in info.value.hint.lower()
    pipe, detection = load_single_file(ckpt, torch.float32, allow_pickle=True)
    assert detection.family == "sd1" and pipe.unet.config.in_channels == 4

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, evil)
    with pytest.raises(ModelError, match="tensors only"):
        load_single_file(evil, torch.float32, allow_pickle=True)


def _fake_safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


@pytest.mark.parametrize(
    "keys, named",
    [
        (["double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight"], "FLUX"),
        (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"], "Stable Diffusion 3"),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "VAE"),
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"],
            "InstructPix2Pix",
        ),
        (["something.else"], "could not be recognised"),
    ],
)
def test_unsupported_checkpoint_is_named_in_the_message(tmp_path, keys, named):
    shapes = {k: ([320, 8, 3, 3] if k.endswith("input_blocks.0.0.weight") else [4, 4]) for k in keys}
    path = _fake_safetensors(tmp_path / "other.safetensors", shapes)
    with pytest.raises(ModelError, match=named):
        load_single_file(path, torch.float32)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00")
    with pytest.raises(ModelError, match="not a readable"):
        checkpoints.detect_file(path)


def test_hash_is_stable_and_a1111_style(zoo):
    _, files = zoo
    path = files["sd1"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert short_hash(path) == short_hash(path) == expected


def test_hub_ids_with_revision_and_subfolder_parse():
    source = ModelSource.parse("stabilityai/sdxl-turbo@fp16:unet")
    assert (source.kind, source.location, source.revision, source.subfolder) == (
        "hub",
        "stabilityai/sdxl-turbo",
        "fp16",
        "unet",
    )
    assert ModelSource.parse("runwayml/stable-diffusion-v1-5").revision is None
    with pytest.raises(ModelError):
        ModelSource.parse("not a model")


@pytest.mark.parametrize("family", ["sd1", "sd1-inpaint", "sd2-v", "sdxl"])
def test_shipped_configs_match_the_real_checkpoint_layouts(family, monkeypatch):
    """Real-size models on the meta device, from the shipped configs: their original-layout names and shapes are
    detected as the right family, and diffusers' own converter maps them back onto the models' parameters."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    monkeypatch.delenv(checkpoints.CONFIGS_ENV, raising=False)
    root = checkpoints.config_folder(family)

    def config(cls, folder: Path) -> dict[str, Any]:
        # load_config is annotated as returning (config, unused kwargs); without return_unused_kwargs it is the config
        return cast(dict[str, Any], cls.load_config(str(folder)))

    with init_empty_weights():
        unet_model = UNet2DConditionModel.from_config(config(UNet2DConditionModel, root / "unet"))
        vae_model = AutoencoderKL.from_config(config(AutoencoderKL, root / "vae"))
        assert isinstance(unet_model, UNet2DConditionModel) and isinstance(vae_model, AutoencoderKL)
        # the pipeline's parts, as pipeline_to_original reads them
        parts = SimpleNamespace(
            unet=unet_model,
            vae=vae_model,
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder"))),
            text_encoder_2=(
                CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(root / "text_encoder_2")))
                if (root / "text_encoder_2").is_dir()
                else None
            ),
        )
    original = checkpoints.pipeline_to_original(parts)
    metadata = {"modelspec.prediction_type": "v"} if family == "sd2-v" else {}
    assert checkpoints.detect_family(checkpoints.shapes_of(original), metadata).family == family
    unet = convert_ldm_unet_checkpoint(original, dict(parts.unet.config))
    assert {k: tuple(v.shape) for k, v in unet.items()} == {
        k: tuple(v.shape) for k, v in parts.unet.state_dict().items()
    }
    vae = convert_ldm_vae_checkpoint(original, dict(parts.vae.config))
    assert set(vae) == set(parts.vae.state_dict())
    tokenizer = checkpoints.shared_tokenizer()
    assert len(tokenizer) == parts.text_encoder.config.vocab_size == 49408
    assert tokenizer("a photograph of an astronaut riding a horse").input_ids == [
        49406,
        320,
        8853,
        539,
        550,
        18376,
        6765,
        320,
        4558,
        49407,
    ]


def test_v_prediction_probe_tells_the_two_sd2_kinds_apart():
    """The UNet test AUTOMATIC1111 uses when an SD 2.x file carries no hint (here on stand-in UNets)."""

    class FakeUNet(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.scale = scale
            self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

        def forward(self, x, t, encoder_hidden_states):
            return type("O", (), {"sample": x * self.scale})()

    assert checkpoints.probe_v_prediction(FakeUNet(-5.0)) is True  # v at t=999 ~ -x0: far below the input
    assert checkpoints.probe_v_prediction(FakeUNet(1.0)) is False  # epsilon at t=999 ~ the input itself


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_text_conditioning_drives_a_direct_unet_call(engine, zoo, family):
    """For code that calls the UNet itself (inversion): SDXL needs pooled text and time ids as added conditioning."""
    from desktop_app.engine.encoding import text_conditioning

    root, _ = zoo
    loaded = engine.models.get(str(root / family))
    embeds, added = text_conditioning(loaded, ["a cat", "a dog"], 64, 64)
    assert (added is not None) == (family == "sdxl")
    latents = torch.zeros(2, 4, 8, 8)
    with torch.inference_mode():
        out = loaded.pipe.unet(
            latents, torch.tensor([500]), encoder_hidden_states=embeds, added_cond_kwargs=added
        ).sample
    assert out.shape == latents.shape


def test_a_folder_with_pickle_weights_only_is_refused_without_opt_in(tiny_model_dir, tmp_path):
    import shutil

    from desktop_app.engine.models import ModelSource, load_pipeline

    folder = tmp_path / "old-style"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelError, match="pickle"):
        load_pipeline(ModelSource.parse(str(folder)), torch.float32)
    pipe = load_pipeline(ModelSource.parse(str(folder)), torch.float32, allow_pickle=True)
    assert pipe.unet.config.in_channels == 4


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_shipped_model_index_and_shared_tokenizer_path(zoo, family, tmp_path, monkeypatch):
    """A config folder laid out like the shipped ones (model_index.json from resources, tokenizer/pad_token.json
    instead of vocab files) loads, with the shared CLIP BPE tokenizer and the family's pad token."""
    import shutil
    from importlib import resources

    root, files = zoo
    shipped = Path(str(resources.files("desktop_app.resources").joinpath("configs").joinpath(family)))
    custom = tmp_path / "configs" / family
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        if (root / family / sub).is_dir():
            (custom / sub).mkdir(parents=True)
            for name in ("config.json", "scheduler_config.json"):
                if (root / family / sub / name).is_file():
                    shutil.copy(root / family / sub / name, custom / sub / name)
    shutil.copy(shipped / "model_index.json", custom / "model_index.json")
    for sub in ("tokenizer", "tokenizer_2"):
        if (shipped / sub).is_dir():
            shutil.copytree(shipped / sub, custom / sub)
    (tmp_path / "configs" / "clip_tokenizer").symlink_to(shipped.parent / "clip_tokenizer")
    monkeypatch.setenv(checkpoints.CONFIGS_ENV, str(tmp_path / "configs"))
    pipe, detection = load_single_file(files[family], torch.float32)
    assert detection.family == family
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.pad_token == "<|endoftext|>"
    if family == "sdxl":
        assert pipe.tokenizer_2.pad_token == "!"


def test_vae_helpers_upcast_an_fp16_sdxl_vae_and_put_it_back(zoo):
    from diffusers import AutoencoderKL

    from desktop_app.engine.encoding import vae_decode, vae_encode
    from desktop_app.engine.models import LoadedModel

    root, _ = zoo
    vae = AutoencoderKL.from_pretrained(str(root / "sdxl" / "vae"), local_files_only=True)
    vae.register_to_config(force_upcast=True)
    # diffusers wraps ModelMixin.to in functools.wraps(torch.nn.Module.to), which the stubs read as unbound
    vae.to(torch.float16)  # pyright: ignore[reportArgumentType]
    # a stand-in with just what the VAE helpers read
    loaded = cast(LoadedModel, SimpleNamespace(pipe=SimpleNamespace(vae=vae), dtype=torch.float16))
    latents = vae_encode(loaded, torch.zeros(1, 3, 64, 64, dtype=torch.float16))
    assert latents.dtype == torch.float16 and latents.shape == (1, 4, 8, 8)
    pixels = vae_decode(loaded, latents)
    assert pixels.dtype == torch.float32 and torch.isfinite(pixels).all()
    assert vae.dtype == torch.float16  # back to half precision afterwards


@pytest.mark.parametrize("content", [b"\x10\x00", b"\x20\x00\x00\x00\x00\x00\x00\x00{not json at all, just bytes}"])
def test_a_damaged_local_checkpoint_is_named_and_not_called_a_download(engine, tmp_path, content):
    """Defect 16: a broken local .safetensors said "download it again"; it is a file the user has."""
    path = tmp_path / "my-model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError) as caught:
        engine.preload(str(path))
    assert str(path) in caught.value.message and "damaged or not a model" in caught.value.message
    assert "download" not in caught.value.hint.lower()
