"""SD 3.x and FLUX.1 files as users have them: detection from the header (safetensors and GGUF), loading a
transformer file with its text encoders from a folder, the messages for what is missing, gated hub repos,
LoRA families, and the memory options. Offline: tiny files with the real tensor names, tiny models (tiny_flow)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop_app.core.errors import ModelError, UserError
from desktop_app.core.loras import family_from_shapes, lora_family
from desktop_app.core.model_registry import CURATED, curated
from desktop_app.engine import checkpoints, flow_files, hub
from desktop_app.engine.device import MemoryOptions, apply_memory_options, flow_memory_hint, pick_dtype

SHIPPED = Path(checkpoints.configs_root())


# -- tiny files with the real names ---------------------------------------------------------------
def _flux_original(width=8, in_channels=64, guidance=True, prefix="") -> dict[str, torch.Tensor]:
    """The names BFL's flux1-*.safetensors use, at a tiny width (header-only detection needs no real sizes)."""
    shapes = _flux_shapes(width, in_channels, guidance)
    return {prefix + k: torch.zeros(v, dtype=torch.float16) for k, v in shapes.items()}


def _flux_shapes(width: int, in_channels: int, guidance: bool) -> dict[str, tuple[int, ...]]:
    t: dict[str, tuple[int, ...]] = {
        "img_in.weight": (width, in_channels),
        "img_in.bias": (width,),
        "txt_in.weight": (width, 16),
        "time_in.in_layer.weight": (width, 256),
        "vector_in.in_layer.weight": (width, 12),
        "double_blocks.0.img_attn.qkv.weight": (3 * width, width),
        "double_blocks.0.img_attn.norm.key_norm.scale": (4,),
        "double_blocks.0.txt_attn.qkv.weight": (3 * width, width),
        "single_blocks.0.linear1.weight": (7 * width, width),
        "final_layer.linear.weight": (64, width),
    }
    if guidance:
        t["guidance_in.in_layer.weight"] = (width, 256)
    return t


def _sd3_original(width=64, depth=2, dual=False, prefix="") -> dict[str, torch.Tensor]:
    """The names of Stability's sd3.5_*.safetensors (MMDiT / MMDiT-X), tiny."""
    t = {
        "x_embedder.proj.weight": (width, 16, 2, 2),
        "pos_embed": (1, 16, width),
        "context_embedder.weight": (width, 32),
        "t_embedder.mlp.0.weight": (width, 256),
        "y_embedder.mlp.0.weight": (width, 64),
    }
    for i in range(depth):
        t[f"joint_blocks.{i}.x_block.attn.qkv.weight"] = (3 * width, width)
        t[f"joint_blocks.{i}.context_block.attn.qkv.weight"] = (3 * width, width)
        t[f"joint_blocks.{i}.context_block.adaLN_modulation.1.bias"] = (6 * width,)
        if dual and i == 0:
            t[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = (3 * width, width)
    return {prefix + k: torch.zeros(v, dtype=torch.float16) for k, v in t.items()}


def _save(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor], metadata=None) -> Path:
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "name, tensors, family, variant",
    [
        ("flux1-schnell.safetensors", _flux_original(guidance=False), "flux-schnell", "flux-schnell"),
        ("flux1-dev.safetensors", _flux_original(), "flux-dev", "flux-dev"),
        ("flux1-fill-dev.safetensors", _flux_original(in_channels=384), "flux-fill", "flux-fill"),
        ("flux1-kontext-dev.safetensors", _flux_original(), "flux-kontext", "flux-kontext"),
        ("my-model.safetensors", _sd3_original(width=64, dual=True), "sd3", "sd3.5-medium"),
        ("sd3.5_large.safetensors", _sd3_original(width=2432, depth=1), "sd3", "sd3.5-large"),
        ("sd3_medium.safetensors", _sd3_original(width=1536, depth=1), "sd3", "sd3-medium"),
    ],
)
def test_each_family_and_variant_is_told_from_the_header(tmp_path, name, tensors, family, variant):
    path = _save(tmp_path, name, tensors)
    assert flow_files.detect_flow_file(path) == family
    detection = flow_files.inspect_flow_file(path)
    assert detection is not None and detection.variant == variant and detection.layout == "original"
    assert not detection.has_vae
    # the variant's recommended settings and its transformer config are shipped
    defaults = flow_files.flow_defaults(detection)
    expected = {
        "flux-schnell": (4, 0.0),
        "flux-dev": (28, 3.5),
        "flux-fill": (50, 30.0),
        "flux-kontext": (28, 2.5),
        "sd3.5-medium": (40, 4.5),
        "sd3.5-large": (28, 3.5),
        "sd3-medium": (28, 7.0),
    }[variant]
    assert (defaults["steps"], defaults["guidance"], defaults["width"]) == (*expected, 1024)
    assert defaults["edit"]["method"] == ("kontext" if variant == "flux-kontext" else "fireflow")
    config = json.loads((flow_files.transformer_config_folder(detection) / "transformer" / "config.json").read_text())
    width = config["num_attention_heads"] * config["attention_head_dim"]
    assert width == {"sd3.5-large": 2432, "sd3.5-medium": 1536, "sd3-medium": 1536}.get(variant, 3072)


def test_kontext_is_named_by_metadata_too_and_a_renamed_kontext_is_dev(tmp_path):
    meta = {"modelspec.title": "FLUX.1 Kontext [dev]"}
    assert flow_files.detect_flow_file(_save(tmp_path, "model.safetensors", _flux_original(), meta)) == "flux-kontext"
    assert flow_files.detect_flow_file(_save(tmp_path, "renamed.safetensors", _flux_original())) == "flux-dev"


def test_all_in_one_files_with_a_vae_and_other_files_are_told_apart(tmp_path):
    vae = {"vae.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "text_encoders.clip_l.x": torch.zeros(2)}
    path = _save(tmp_path, "flux1-dev-fp8.safetensors", {**_flux_original(prefix="model.diffusion_model."), **vae})
    detection = flow_files.inspect_flow_file(path)
    assert detection is not None and detection.variant == "flux-dev" and detection.prefix == "model.diffusion_model."
    assert detection.has_vae and detection.text_encoders == ("clip_l",)
    assert "vae" not in flow_files.parts_needed(detection)
    sd1 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072)}
    assert flow_files.detect_flow_file(_save(tmp_path, "sd1.safetensors", sd1)) is None
    assert flow_files.detect_flow_file(_save(tmp_path, "lora.safetensors", lora)) is None
    with pytest.raises(ModelError, match=r"FLUX.1 \[dev\] \(FLUX.1 blocks .*not a Stable Diffusion 1.x") as info:
        checkpoints.detect_file(path)  # the SD reader (and `models --detect`) sends it to the flow loader
    assert "Open it as a model" in info.value.hint
    with pytest.raises(ModelError, match="Depth / Canny"):
        flow_files.detect_flow_file(_save(tmp_path, "flux1-depth.safetensors", _flux_original(in_channels=128)))
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelError, match="damaged"):
        flow_files.detect_flow_file(tmp_path / "cut.safetensors")


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)


def test_the_rules_agree_with_diffusers_on_the_real_models_shapes():
    """diffusers' infer_diffusers_model_type on header-only shapes of the real models (the numbers it matches)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    def flux(guidance, in_channels=64):
        s = _flux_shapes(3072, in_channels, guidance)
        if guidance:
            s["guidance_in.in_layer.bias"] = (3072,)
        return s

    def sd35(width, depth, dual, positions):
        s = {"x_embedder.proj.weight": (width, 16, 2, 2), "pos_embed": (1, positions, width)}
        for i in range(depth):
            s[f"joint_blocks.{i}.x_block.attn.qkv.weight"] = (3 * width, width)
            s[f"joint_blocks.{i}.context_block.adaLN_modulation.1.bias"] = (6 * width,)
            s[f"joint_blocks.{i}.x_block.mlp.fc1.weight"] = (4 * width, width)
            if dual and i < 13:
                s[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = (3 * width, width)
        return s

    cases = {
        "flux-schnell": (flux(False), "flux-schnell"),
        "flux-dev": (flux(True), "flux-dev"),
        "flux-fill": (flux(True, 384), "flux-fill"),
        "sd35_medium": (sd35(1536, 24, True, 384 * 384), "sd3.5-medium"),
        "sd35_large": (sd35(2432, 38, False, 192 * 192), "sd3.5-large"),
    }
    for theirs, (shapes, ours) in cases.items():
        assert infer_diffusers_model_type({k: _Shape(v) for k, v in shapes.items()}) == theirs
        detection = checkpoints.detect_flow(shapes)
        assert detection is not None and detection.variant == ours, theirs


# -- GGUF -------------------------------------------------------------------------------------------
def _write_gguf(path: Path, tensors: dict[str, np.ndarray], name="tiny", quantize=False) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_string("general.name", name)
    writer.add_array("general.tags", ["a", "b"])  # an array the header reader must step over
    for key, value in tensors.items():
        value = value.astype(np.float32)
        if quantize and value.ndim == 2 and value.shape[-1] % 32 == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(key, gguf.quants.quantize(value, q8), raw_dtype=q8)
        else:
            writer.add_tensor(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="the optional gguf package")


@needs_gguf
def test_gguf_headers_are_read_without_the_gguf_package(tmp_path, monkeypatch):
    tensors = {k: v.float().numpy() for k, v in _flux_original(guidance=False).items()}
    path = _write_gguf(tmp_path / "flux1-schnell-Q8_0.gguf", tensors, name="FLUX.1 schnell")
    shapes, metadata = flow_files.read_gguf_header(path)
    assert shapes["img_in.weight"] == (8, 64) and shapes["double_blocks.0.img_attn.qkv.weight"] == (24, 8)
    assert metadata["general.name"] == "FLUX.1 schnell" and "general.tags" not in metadata
    monkeypatch.setattr(flow_files, "gguf_installed", lambda: False)
    assert flow_files.detect_flow_file(path) == "flux-schnell"
    with pytest.raises(ModelError) as info:
        flow_files.load_flow_file(path, torch.float32)
    assert "gguf" in info.value.message and "pip install gguf" in info.value.hint
    with pytest.raises(ModelError, match="is a GGUF file, not a .safetensors file") as info:
        checkpoints.read_header(path)  # the SD reader (models --detect) sends it to the model loader
    assert "Open it as a model" in info.value.hint
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelError, match="cut short"):
        flow_files.read_gguf_header(path)


# -- loading a tiny transformer file ----------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    from tiny_flow import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flow") / "tiny-flux-dev", variant="dev")


@pytest.fixture
def flow_env(tmp_path, monkeypatch, tiny_flux):
    """Shipped configs with the tiny transformer's config in place of the real one; an empty hub cache."""
    configs = tmp_path / "configs"
    shutil.copytree(SHIPPED / "flux-dev", configs / "flux-dev")
    for part in ("transformer", "vae"):  # the tiny model's sizes in place of the real ones
        shutil.copy(tiny_flux / part / "config.json", configs / "flux-dev" / part / "config.json")
    monkeypatch.setenv(checkpoints.CONFIGS_ENV, str(configs))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv(flow_files.COMPONENTS_ENV, raising=False)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors", models / "flux1-dev.safetensors")
    return models / "flux1-dev.safetensors"


def _image(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        "a red circle", num_inference_steps=2, height=64, width=64, output_type="np", generator=generator
    ).images[0]


def test_missing_text_encoders_are_named_with_every_place_looked_in(flow_env, tiny_flux, tmp_path):
    with pytest.raises(ModelError) as info:
        flow_files.load_flow_file(flow_env, torch.float32)
    message, hint = info.value.message, info.value.hint
    for part in ("text_encoder/config.json", "text_encoder_2/", "tokenizer_2/spiece.model", "vae/"):
        assert part in message
    assert "tokenizer/vocab.json" not in message  # the CLIP vocabulary is shipped
    assert f"next to the file: {flow_env.parent}" in message
    assert str(tmp_path / "hub-cache" / "models--black-forest-labs--FLUX.1-dev") in message
    assert "models--black-forest-labs--FLUX.1-schnell" in message
    assert "--download black-forest-labs/FLUX.1-schnell" in hint and flow_files.COMPONENTS_ENV in hint
    assert "clip_l.safetensors / t5xxl_fp16.safetensors" in hint
    # a folder with some of them: only the rest is missing
    partial = tmp_path / "partial"
    for part in ("text_encoder", "vae"):
        shutil.copytree(tiny_flux / part, partial / part)
    with pytest.raises(ModelError) as info:
        flow_files.load_flow_file(flow_env, torch.float32, text_encoders=partial)
    message = info.value.message
    assert "the folder given for the text encoders: " + str(partial) in message
    assert "text_encoder_2/" in message and "text_encoder/" not in message and "vae/" not in message


def test_a_transformer_file_loads_with_its_parts_from_a_folder_and_makes_an_image(flow_env, tiny_flux, monkeypatch):
    from diffusers import FluxPipeline

    pipe = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=tiny_flux)
    assert type(pipe).__name__ == "FluxPipeline" and pipe._diffusion_desk_family == "flux-dev"
    assert pipe.scheduler.config.use_dynamic_shifting  # the shipped dev schedule
    reference = FluxPipeline.from_pretrained(str(tiny_flux), local_files_only=True)
    ours, theirs = _image(pipe), _image(reference)
    assert ours.shape == (64, 64, 3) and np.abs(ours - theirs).max() < 1e-5  # the same model, bit for bit
    # the same parts found through the environment variable, and next to the file
    monkeypatch.setenv(flow_files.COMPONENTS_ENV, str(tiny_flux))
    chosen = flow_files.resolve_components(flow_files.inspect_flow_file(flow_env), flow_env)  # pyright: ignore[reportArgumentType]
    assert set(chosen) == {"text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"}
    assert set(chosen.values()) == {tiny_flux}
    # the memory options on a CPU: offload is a no-op (it needs CUDA), tiling is set, the image is the same
    every = MemoryOptions(attention_slicing=True, vae_tiling=True, cpu_offload=True, sequential_offload=True)
    apply_memory_options(pipe, every, torch.device("cpu"))
    assert pipe.vae.use_tiling and pipe.device.type == "cpu"
    assert np.abs(_image(pipe) - ours).max() < 1e-5
    apply_memory_options(pipe, MemoryOptions(), torch.device("cpu"))
    assert not pipe.vae.use_tiling


@needs_gguf
def test_a_gguf_q8_transformer_loads_and_draws_nearly_the_same_image(flow_env, tiny_flux):
    from safetensors.numpy import load_file

    tensors = load_file(str(flow_env))
    path = _write_gguf(flow_env.parent / "flux1-dev-Q8_0.gguf", tensors, quantize=True)
    pipe = flow_files.load_flow_file(path, torch.float32, text_encoders=tiny_flux)
    assert type(pipe.transformer.x_embedder.weight).__name__ == "GGUFParameter"  # stays quantised in memory
    plain = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=tiny_flux)
    diff = np.abs(_image(pipe) - _image(plain)).max()
    assert 0 < diff < 0.05  # Q8_0 rounds the weights: close, not equal


# -- gated hub repos --------------------------------------------------------------------------------
class _StandInHub:
    """A stand-in hub for one repo (HF_ENDPOINT): lists `files` and serves them, or, gated, refuses them
    (403, X-Error-Code: GatedRepo) as the hub does FLUX.1 dev's to a user who has not accepted its license."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repo: str, files: dict[str, bytes], gated: bool = False) -> None:
        self.requested: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith(f"/api/models/{repo}"):
                    siblings = [{"rfilename": f, "size": len(b)} for f, b in files.items()]
                    info = {"id": repo, "sha": stand_in.COMMIT, "siblings": siblings}
                    self._send(200, json.dumps(info).encode(), [("Content-Type", "application/json")])
                    return
                if gated:
                    refusal = [("X-Error-Code", "GatedRepo"), ("X-Error-Message", "Access to model is restricted.")]
                    self._send(403, b"restricted", refusal)
                    return
                name = self.path.split("?")[0].split("/resolve/", 1)[-1].split("/", 1)[-1]
                if name not in files:
                    self._send(404)
                    return
                stand_in.requested.append(name)
                data = files[name]
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                self._send(200, data, [("X-Repo-Commit", stand_in.COMMIT), ("ETag", etag)])

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch):
    """The hub switched on (conftest switches it off) and pointed at a stand-in; HF_HUB_OFFLINE restored after."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    servers: list[_StandInHub] = []

    def serve(repo: str, files: dict[str, bytes], gated: bool = False) -> _StandInHub:
        server = _StandInHub(repo, files, gated)
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        return server

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield serve
    for server in servers:
        server.close()
    constants.HF_HUB_OFFLINE = saved


def test_a_gated_repo_says_how_to_log_in(tmp_path, monkeypatch, online):
    repo = "black-forest-labs/FLUX.1-dev"
    online(repo, {"model_index.json": b"{}", "transformer/config.json": b"{}"}, gated=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "_has_token", lambda: False)
    with pytest.raises(ModelError) as info:
        hub.download_model(repo, timeout=5)
    assert "FLUX.1 [dev]" in info.value.message and "gated" in info.value.message
    hint = info.value.hint
    assert f"https://huggingface.co/{repo}" in hint and "hf auth login" in hint and "HF_TOKEN" in hint
    monkeypatch.setattr(hub, "_has_token", lambda: True)
    with pytest.raises(ModelError, match="refused .* to your token"):
        hub.download_model(repo, timeout=5)


def test_only_the_parts_are_downloaded_and_a_transformer_file_then_finds_them(flow_env, tiny_flux, online):
    files = {p.relative_to(tiny_flux).as_posix(): p.read_bytes() for p in tiny_flux.rglob("*") if p.is_file()}
    server = online("black-forest-labs/FLUX.1-schnell", files)
    folder = flow_files.download_parts("flux-dev")
    assert not any(name.startswith("transformer/") for name in server.requested)  # the 23 GB part stays there
    assert {name.split("/")[0] for name in server.requested} >= {"text_encoder", "text_encoder_2", "vae"}
    assert (folder / "text_encoder_2" / "config.json").is_file() and not (folder / "transformer").exists()
    pipe = flow_files.load_flow_file(flow_env, torch.float32)  # found in the hub cache, no folder given
    assert type(pipe).__name__ == "FluxPipeline" and pipe._diffusion_desk_family == "flux-dev"


def test_curated_flow_models_have_families_settings_and_gates():
    flow = {m.repo: m for m in CURATED if m.family.startswith(("flux", "sd3"))}
    assert set(flow) == {
        "black-forest-labs/FLUX.1-schnell",
        "black-forest-labs/FLUX.1-dev",
        "black-forest-labs/FLUX.1-Fill-dev",
        "black-forest-labs/FLUX.1-Kontext-dev",
        "stabilityai/stable-diffusion-3.5-medium",
        "stabilityai/stable-diffusion-3.5-large",
    }
    schnell = flow["black-forest-labs/FLUX.1-schnell"]
    assert not schnell.gated and schnell.login_hint == "" and schnell.defaults()["guidance"] == 0.0
    assert all(m.gated and "hf auth login" in m.login_hint for r, m in flow.items() if r != schnell.repo)
    kontext = curated("black-forest-labs/FLUX.1-Kontext-dev")
    assert kontext is not None and kontext.defaults()["edit"] == {"method": "kontext"}
    for model in flow.values():  # the hub entry and the shipped configs recommend the same
        assert (SHIPPED / model.family / "model_index.json").is_file()
        assert 10 < model.size_gb == model.size_gb_fp32 < 40  # bf16 weights only: no smaller fp16 variant


# -- LoRAs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shapes, family, says",
    [
        (  # kohya / sd-scripts FLUX.1
            {
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 16),
                "lora_unet_single_blocks_0_linear2.lora_down.weight": (16, 15360),
            },
            "flux",
            "3072",
        ),
        (  # diffusers / PEFT (ai-toolkit) FLUX.1
            {
                "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (8, 3072),
                "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 8),
            },
            "flux",
            "3072",
        ),
        ({"double_blocks.0.processor.qkv_lora1.down.weight": (16, 3072)}, "flux", "FLUX.1"),  # XLabs
        (  # diffusers FLUX.1 trained on the double blocks only
            {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (8, 3072)},
            "flux",
            "3072",
        ),
        ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (8, 1536)}, "sd3", "Medium"),
        ({"transformer.transformer_blocks.0.attn.to_k.lora_A.weight": (8, 2432)}, "sd3", "Large"),
        ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (8, 1536)}, "sd3", "1536"),  # kohya SD3
        ({"double_blocks.0.img_attn.qkv.lora_A.weight": (8, 6144)}, "unknown", "FLUX-like"),  # FLUX.2's width
        (  # an SD 1.5 diffusers LoRA: its transformer_blocks are inside the UNet's attentions
            {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768)},
            "sd1",
            "768",
        ),
    ],
)
def test_lora_families_of_flow_transformers(shapes, family, says):
    found, evidence = family_from_shapes(shapes)
    assert found == family and says in evidence


def test_a_lora_file_of_flux_is_listed_as_flux(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072)}, str(path))
    assert lora_family(path) == "flux"


def test_flow_loras_are_checked_against_the_loaded_model():
    from desktop_app.engine.lora import check_compatible

    def loaded(family, heads, head_dim):
        config = SimpleNamespace(num_attention_heads=heads, attention_head_dim=head_dim)
        pipe = SimpleNamespace(transformer=SimpleNamespace(config=config), unet=None)
        return SimpleNamespace(family=family, model_id=family, pipe=pipe, is_xl=False)

    flux, medium, large = loaded("flux-dev", 24, 128), loaded("sd3", 24, 64), loaded("sd3", 38, 64)
    flux_lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072)}
    medium_lora = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (8, 1536)}
    sd1_lora = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}
    check_compatible(flux_lora, flux, "style.safetensors")  # pyright: ignore[reportArgumentType]
    check_compatible(medium_lora, medium, "m.safetensors")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="is a FLUX.1 LoRA .* is SD 3.x"):
        check_compatible(flux_lora, medium, "style.safetensors")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="width 1536.* 2432 wide"):
        check_compatible(medium_lora, large, "m.safetensors")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="SD 1.x LoRA"):
        check_compatible(sd1_lora, flux, "old.safetensors")  # pyright: ignore[reportArgumentType]


# -- precision and memory ---------------------------------------------------------------------------
def test_precision_is_bf16_for_flow_models_on_gpus_that_have_it(monkeypatch):
    from desktop_app.engine import device

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype(cpu, None, family="flux-dev") == torch.float32
    assert pick_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(device, "_bf16_supported", lambda d: True)
    assert pick_dtype(cuda, None, family="flux-schnell") == torch.bfloat16
    assert pick_dtype(cuda, None, family="sd3") == torch.bfloat16
    assert pick_dtype(cuda, None, family="sdxl") == torch.float16
    assert pick_dtype(cuda, "fp16", family="flux-dev") == torch.float16
    monkeypatch.setattr(device, "_bf16_supported", lambda d: False)  # a Turing / Volta GPU
    assert pick_dtype(cuda, None, family="flux-dev") == torch.float16
    with pytest.raises(UserError, match="Unknown precision"):
        pick_dtype(cuda, "int4")


def test_the_flow_memory_hint_names_the_one_option_that_helps():
    assert "batch 1" in flow_memory_hint(MemoryOptions(), width=1024, height=1024, batch=2)
    assert "VAE tiling" in flow_memory_hint(MemoryOptions(), width=1536, height=1536)
    assert "model CPU offload" in flow_memory_hint(MemoryOptions(vae_tiling=True), width=1024, height=1024)
    assert "sequential CPU offload" in flow_memory_hint(MemoryOptions(cpu_offload=True), width=1024, height=1024)
    all_on = MemoryOptions(attention_slicing=True, vae_tiling=True, cpu_offload=True, sequential_offload=True)
    assert "GGUF" in flow_memory_hint(all_on, width=1024, height=1024, quantized=False)
    assert "smaller image" in flow_memory_hint(all_on, width=1024, height=1024, quantized=True)
    assert "attention slicing" not in " ".join(
        flow_memory_hint(m, width=1024, height=1024) for m in (MemoryOptions(), all_on)
    )


def test_a_flux_lora_is_applied_reweighted_and_removed_on_a_flux_pipeline(flow_env, tiny_flux, tmp_path):
    from desktop_app.engine.lora import apply_loras

    pipe = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=tiny_flux)
    generator = torch.Generator().manual_seed(1)
    lora = {}
    for block in ("transformer_blocks.0.attn", "single_transformer_blocks.0.attn"):
        for proj in ("to_q", "to_k", "to_v"):
            key = f"transformer.{block}.{proj}"
            lora[f"{key}.lora_A.weight"] = torch.randn(4, 32, generator=generator)
            lora[f"{key}.lora_B.weight"] = torch.randn(32, 4, generator=generator)
    path = tmp_path / "tiny-style.safetensors"
    save_file(lora, str(path))
    loaded = SimpleNamespace(pipe=pipe, loras={}, family="flux-dev", model_id="flux1-dev.safetensors", is_xl=False)
    before = _image(pipe)
    fields = apply_loras(loaded, [(str(path), 1.0)])  # pyright: ignore[reportArgumentType]
    full = _image(pipe)
    apply_loras(loaded, [(str(path), 0.5)])  # pyright: ignore[reportArgumentType]
    half = _image(pipe)
    assert fields["Loras"] == "tiny-style:1" and "tiny-style: " in fields["Lora hashes"]
    assert np.abs(full - before).max() > 1e-3 and np.abs(half - before).max() < np.abs(full - before).max()
    apply_loras(loaded, [])  # pyright: ignore[reportArgumentType]
    assert loaded.loras == {} and np.abs(_image(pipe) - before).max() < 1e-5


def test_flux_vae_as_black_forest_labs_ship_it_is_taken_from_beside_the_file(flow_env, tiny_flux, tmp_path):
    """`ae.safetensors` (original layout) next to the transformer: the parts folder need not have a vae/."""
    from diffusers import AutoencoderKL, FluxPipeline
    from safetensors.torch import load_file

    vae = AutoencoderKL.from_pretrained(str(tiny_flux / "vae"))
    original = checkpoints.vae_to_original(vae.state_dict(), vae.config)
    save_file(
        {k.removeprefix(checkpoints.VAE): v.contiguous() for k, v in original.items()},
        str(flow_env.parent / "ae.safetensors"),
    )
    parts = tmp_path / "parts"
    for part in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        shutil.copytree(tiny_flux / part, parts / part)
    detection = flow_files.inspect_flow_file(flow_env)
    assert detection is not None
    assert flow_files.resolve_components(detection, flow_env, parts)["vae"] == flow_env.parent / "ae.safetensors"
    pipe = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=parts)
    ours = pipe.vae.state_dict()
    theirs = load_file(str(tiny_flux / "vae" / "diffusion_pytorch_model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) for k in ours)
    reference = FluxPipeline.from_pretrained(str(tiny_flux), local_files_only=True)
    assert np.abs(_image(pipe) - _image(reference)).max() < 1e-5


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    from tiny_flow import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("flow") / "tiny-sd3")


@pytest.fixture
def sd3_file(tiny_sd3, tmp_path, monkeypatch) -> Path:
    """The tiny SD 3.5-medium-layout transformer as a single file, with the tiny sizes in the shipped configs."""
    configs = tmp_path / "configs"
    shutil.copytree(SHIPPED / "sd3", configs / "sd3")
    shutil.copy(tiny_sd3 / "transformer" / "config.json", configs / "sd3" / "transformer" / "config.json")
    monkeypatch.setenv(checkpoints.CONFIGS_ENV, str(configs))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    path = tmp_path / "sd3.5_medium.safetensors"
    shutil.copy(tiny_sd3 / "transformer" / "diffusion_pytorch_model.safetensors", path)
    return path


def test_an_sd35_medium_transformer_file_loads_with_three_text_encoders(tiny_sd3, sd3_file):
    from diffusers import StableDiffusion3Pipeline

    path = sd3_file
    detection = flow_files.inspect_flow_file(path)
    assert detection is not None and detection.variant == "sd3.5-medium" and detection.layout == "diffusers"
    pipe = flow_files.load_flow_file(path, torch.float32, text_encoders=tiny_sd3)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe._diffusion_desk_family == "sd3"
    assert pipe.text_encoder_3 is not None and pipe.scheduler.config.shift == 3.0
    reference = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3), local_files_only=True)
    ours, theirs = _image(pipe), _image(reference)
    assert np.abs(ours - theirs).max() < 1e-5


def _encoder_tensors(folder: Path, part: str) -> dict[str, torch.Tensor]:
    """A tiny text encoder's weights as ComfyUI / Stability files hold them (Hugging Face names, one embedding)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / part / "model.safetensors"))
    tensors.pop("encoder.embed_tokens.weight", None)  # T5's tied embedding is stored once, as shared.weight
    return tensors


def test_comfyui_text_encoder_files_beside_the_transformer_are_used(flow_env, tiny_flux, tmp_path):
    from diffusers import FluxPipeline

    save_file(_encoder_tensors(tiny_flux, "text_encoder"), str(flow_env.parent / "clip_l.safetensors"))
    save_file(_encoder_tensors(tiny_flux, "text_encoder_2"), str(flow_env.parent / "t5xxl_fp16.safetensors"))
    for part in ("text_encoder", "text_encoder_2"):  # the shipped (here: tiny) configs build them
        shutil.copy(tiny_flux / part / "config.json", Path(flow_files.checkpoints.configs_root()) / "flux-dev" / part)
    parts = tmp_path / "parts"
    for part in ("tokenizer", "tokenizer_2", "vae"):
        shutil.copytree(tiny_flux / part, parts / part)
    detection = flow_files.inspect_flow_file(flow_env)
    assert detection is not None
    chosen = flow_files.resolve_components(detection, flow_env, parts)
    assert (
        chosen["text_encoder"].name == "clip_l.safetensors"
        and chosen["text_encoder_2"].name == "t5xxl_fp16.safetensors"
    )
    pipe = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=parts)
    reference = FluxPipeline.from_pretrained(str(tiny_flux), local_files_only=True)
    assert np.abs(_image(pipe) - _image(reference)).max() < 1e-5


def test_an_all_in_one_file_brings_its_vae_and_text_encoders_fp8_scaled_t5_included(flow_env, tiny_flux, tmp_path):
    """ComfyUI's all-in-one layout: model.diffusion_model.*, first_stage_model.*, text_encoders.{clip_l,t5xxl}.*,
    the T5 in scaled FP8 (weight x scale_weight); only the T5 tokenizer comes from elsewhere."""
    from diffusers import AutoencoderKL, FluxPipeline
    from safetensors.torch import load_file

    for part in ("text_encoder", "text_encoder_2"):
        shutil.copy(tiny_flux / part / "config.json", Path(flow_files.checkpoints.configs_root()) / "flux-dev" / part)
    vae = AutoencoderKL.from_pretrained(str(tiny_flux / "vae"))
    t5 = _scaled_fp8(_encoder_tensors(tiny_flux, "text_encoder_2"))
    tensors = {
        **{"model.diffusion_model." + k: v for k, v in load_file(str(flow_env)).items()},
        **{k: v.contiguous() for k, v in checkpoints.vae_to_original(vae.state_dict(), vae.config).items()},
        **{"text_encoders.clip_l.transformer." + k: v for k, v in _encoder_tensors(tiny_flux, "text_encoder").items()},
        **{"text_encoders.t5xxl.transformer." + k: v for k, v in t5.items()},
        "text_encoders.t5xxl.transformer.scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
    }
    path = _save(tmp_path, "flux1-dev-fp8-all-in-one.safetensors", tensors)
    parts = tmp_path / "parts"
    for part in ("tokenizer", "tokenizer_2"):  # the tiny CLIP has its own small vocabulary, not the shipped one
        shutil.copytree(tiny_flux / part, parts / part)
    detection = flow_files.inspect_flow_file(path)
    assert detection is not None and detection.has_vae and detection.text_encoders == ("clip_l", "t5xxl")
    chosen = flow_files.resolve_components(detection, path, parts)
    assert chosen == {"text_encoder": path, "text_encoder_2": path, "tokenizer": parts, "tokenizer_2": parts}
    pipe = flow_files.load_flow_file(path, torch.float32, text_encoders=parts)
    reference = FluxPipeline.from_pretrained(str(tiny_flux), local_files_only=True)
    ours_vae, theirs_vae = pipe.vae.state_dict(), reference.vae.state_dict()
    assert all(torch.equal(ours_vae[k], theirs_vae[k].reshape(ours_vae[k].shape)) for k in theirs_vae)
    q = pipe.text_encoder_2.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    q_ref = reference.text_encoder_2.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert 0 < (q - q_ref).abs().max() < 0.1 * q_ref.abs().max()  # FP8 rounding, scaled back
    image, expected = _image(pipe), _image(reference)
    assert image.shape == (64, 64, 3) and 0 < np.abs(image - expected).max() < 0.2  # near, through the FP8 T5


def _scaled_fp8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's fp8_scaled layout: each 2-D weight in float8_e4m3fn with its `<layer>.scale_weight`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(".weight") and value.ndim == 2 and not key.endswith("shared.weight"):
            scale = value.abs().max().float() / 448.0  # float8_e4m3fn's largest value
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    return out


def test_a_scaled_fp8_transformer_is_multiplied_back_by_its_scales(flow_env, tiny_flux, tmp_path):
    from safetensors.torch import load_file

    plain = load_file(str(flow_env))
    path = _save(tmp_path, "flux1-dev-fp8_scaled.safetensors", {**_scaled_fp8(plain), "scaled_fp8": torch.zeros(0)})
    detection = flow_files.inspect_flow_file(path)
    assert detection is not None and detection.scaled_fp8 and "scaled FP8 weights" in detection.evidence
    pipe = flow_files.load_flow_file(path, torch.float32, text_encoders=tiny_flux)
    weight, reference = pipe.transformer.x_embedder.weight, plain["x_embedder.weight"]
    assert 0 < (weight - reference).abs().max() < 0.1 * reference.abs().max()  # FP8 rounding only, not 1 / scale
    exact = flow_files.load_flow_file(flow_env, torch.float32, text_encoders=tiny_flux)
    assert 0 < np.abs(_image(pipe) - _image(exact)).max() < 0.2


@pytest.mark.parametrize(
    "family, sub, billions",
    [  # what the released files hold (bf16 bytes / 2): flux1-dev 23.8 GB, SD 3.5 Large 16.3 GB, Medium 4.94 GB
        ("flux-dev", "", 11.90),
        ("flux-schnell", "", 11.89),
        ("flux-fill", "", 11.90),
        ("sd3", "", 2.47),
        ("sd3", "large", 8.15),
        ("sd3", "sd3-medium", 2.08),
    ],
)
def test_the_shipped_transformer_configs_build_the_released_models(family, sub, billions):
    """Built on the meta device (no memory): parameters and the stored position table, in billions."""
    import accelerate
    import diffusers

    cls = diffusers.FluxTransformer2DModel if family.startswith("flux") else diffusers.SD3Transformer2DModel
    with accelerate.init_empty_weights(include_buffers=True):
        config = json.loads((SHIPPED / family / sub / "transformer" / "config.json").read_text(encoding="utf-8"))
        model = cls.from_config(config)
    stored = sum(t.numel() for t in model.state_dict().values())  # pyright: ignore[reportAttributeAccessIssue]
    assert abs(stored / 1e9 - billions) < 0.01, stored


def test_an_sd3_lora_is_applied_and_removed_on_an_sd3_pipeline(tiny_sd3, sd3_file, tmp_path):
    from desktop_app.engine.lora import apply_loras

    pipe = flow_files.load_flow_file(sd3_file, torch.float32, text_encoders=tiny_sd3)
    generator = torch.Generator().manual_seed(2)
    lora = {}
    for block in ("transformer_blocks.0.attn", "transformer_blocks.1.attn"):
        for proj in ("to_q", "to_k", "to_v", "add_q_proj"):
            key = f"transformer.{block}.{proj}"
            lora[f"{key}.lora_A.weight"] = torch.randn(4, 32, generator=generator)
            lora[f"{key}.lora_B.weight"] = torch.randn(32, 4, generator=generator)
    path = tmp_path / "sd3-style.safetensors"
    save_file(lora, str(path))
    loaded = SimpleNamespace(pipe=pipe, loras={}, family="sd3", model_id=sd3_file.name, is_xl=False)
    before = _image(pipe)
    apply_loras(loaded, [(str(path), 1.0)])  # pyright: ignore[reportArgumentType]
    assert np.abs(_image(pipe) - before).max() > 1e-3
    apply_loras(loaded, [])  # pyright: ignore[reportArgumentType]
    assert np.abs(_image(pipe) - before).max() < 1e-5


def test_stability_text_encoder_files_load_sd3_and_clip_tokenizers_are_shipped(tiny_sd3, sd3_file, tmp_path):
    """Stability's repo layout: sd3.5_*.safetensors beside text_encoders/clip_l, clip_g, t5xxl_fp16.safetensors."""
    from diffusers import StableDiffusion3Pipeline

    folder = sd3_file.parent / "text_encoders"
    folder.mkdir()
    for part, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g"), ("text_encoder_3", "t5xxl_fp16")):
        save_file(_encoder_tensors(tiny_sd3, part), str(folder / f"{name}.safetensors"))
        shutil.copy(tiny_sd3 / part / "config.json", Path(checkpoints.configs_root()) / "sd3" / part)
    parts = tmp_path / "parts"
    for part in ("tokenizer", "tokenizer_2", "tokenizer_3", "vae"):
        shutil.copytree(tiny_sd3 / part, parts / part)
    shutil.copy(tiny_sd3 / "vae" / "config.json", Path(checkpoints.configs_root()) / "sd3" / "vae")
    detection = flow_files.inspect_flow_file(sd3_file)
    assert detection is not None
    chosen = flow_files.resolve_components(detection, sd3_file, parts)
    assert [chosen[f"text_encoder{n}"].name for n in ("", "_2", "_3")] == [
        "clip_l.safetensors",
        "clip_g.safetensors",
        "t5xxl_fp16.safetensors",
    ]
    pipe = flow_files.load_flow_file(sd3_file, torch.float32, text_encoders=parts)
    reference = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3), local_files_only=True)
    assert np.abs(_image(pipe) - _image(reference)).max() < 1e-5
    # without tokenizer folders the CLIP ones are the shipped vocabulary, with each family's pad token
    shipped = [
        flow_files._load_part(n, "CLIPTokenizer", None, detection, torch.float32, sd3_file)
        for n in ("tokenizer", "tokenizer_2")
    ]
    assert [len(t) for t in shipped] == [49408, 49408] and [t.pad_token for t in shipped] == ["<|endoftext|>", "!"]


def test_a_kontext_file_becomes_a_kontext_pipeline(flow_env, tiny_flux):
    """Kontext has dev's tensors: its name makes it FluxKontextPipeline, with Kontext's shipped settings."""
    configs = Path(checkpoints.configs_root())
    shutil.copytree(SHIPPED / "flux-kontext", configs / "flux-kontext")
    for part in ("transformer", "vae"):
        shutil.copy(tiny_flux / part / "config.json", configs / "flux-kontext" / part / "config.json")
    path = flow_env.parent / "flux1-kontext-dev.safetensors"
    shutil.copy(flow_env, path)
    pipe = flow_files.load_flow_file(path, torch.float32, text_encoders=tiny_flux)
    assert type(pipe).__name__ == "FluxKontextPipeline" and pipe._diffusion_desk_family == "flux-kontext"
    defaults = json.loads((Path(pipe._diffusion_desk_settings) / "diffusion_desk.json").read_text())
    assert defaults["edit"]["method"] == "kontext" and defaults["guidance"] == 2.5


def test_the_command_line_detects_a_flux_file_as_a_user_runs_it(tmp_path):
    """`diffusion-desk models --detect FILE`, a real process: the family and the evidence, header only."""
    import json
    import subprocess
    import sys

    path = _save(tmp_path, "flux1-schnell.safetensors", _flux_original(guidance=False))
    out = subprocess.run(
        [sys.executable, "-m", "desktop_app", "models", "--detect", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["family"] == "flux-schnell" and found["prediction_type"] == "flow" and found["evidence"]
    assert "FLUX.1" in found["name"]
