"""Previews at no load cost (engine.preview.previewer_for): known family maps with no VAE call, a fitted map cached
per model, TAESD decoders when the user has their weights, and trajectories that still pickle."""

from __future__ import annotations

import json
import pickle
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from desktop_app.core import paths
from desktop_app.core.latents import LatentPreviewer, Trajectory
from desktop_app.engine import preview
from desktop_app.engine.preview import TaesdPreviewer, previewer_for


class FamilyShapedVAE(torch.nn.Module):
    """A VAE with a real family's config (block_out_channels, latent channels, scale, shift) whose encode / decode
    only count: a known family's previewer must not call them."""

    def __init__(self, channels: int, scaling_factor: float, shift_factor: float | None = None) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=channels,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        self.conv = torch.nn.Conv2d(channels, 3, 1)
        self.calls = 0

    def encode(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("a known family's previewer must not encode")

    def decode(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("a known family's previewer must not decode")


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """The tests' tiny SD-layout VAE (tests/tiny_model.py's shape), its encode / decode counted in `.calls`."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    ).eval()
    counted = {"calls": 0}
    encode, decode = vae.encode, vae.decode

    def counting(fn):
        def call(*args, **kwargs):
            counted["calls"] += 1
            return fn(*args, **kwargs)

        return call

    vae.encode, vae.decode = counting(encode), counting(decode)  # type: ignore[method-assign]
    vae.counted = counted  # type: ignore[attr-defined]
    return vae


FAMILIES = [
    ("sd1", preview.SD15, 4),
    ("sd2-v", preview.SD15, 4),
    ("sd1-inpaint", preview.SD15, 4),
    ("sdxl", preview.SDXL, 4),
    ("sdxl-inpaint", preview.SDXL, 4),
    ("sd3", preview.SD3, 16),
    ("flux-dev", preview.FLUX, 16),
    ("flux-schnell", preview.FLUX, 16),
    ("flux-fill", preview.FLUX, 16),
    ("flux-kontext", preview.FLUX, 16),
]


@pytest.mark.parametrize(("family", "fmt", "channels"), FAMILIES)
def test_known_families_use_comfyui_factors_without_a_vae_call(family, fmt, channels):
    vae = FamilyShapedVAE(channels, fmt.scale, fmt.shift or None)
    found = previewer_for(vae, family, "0123abcd", model_id="some-model")
    assert vae.calls == 0
    assert isinstance(found, LatentPreviewer)
    assert found.weights.shape == (channels + 1, 3)
    # at ComfyUI's own scale and shift the map is ComfyUI's factors and bias as they are
    np.testing.assert_allclose(found.weights[:channels], np.asarray(fmt.factors), atol=1e-6)
    np.testing.assert_allclose(found.weights[channels], np.asarray(fmt.bias), atol=1e-6)
    assert not any(paths.preview_cache_dir().iterdir())  # nothing fitted, nothing cached


def test_factors_are_comfyuis_numbers():
    """A few entries of comfy/latent_formats.py (ComfyUI 0.3.64), copied by hand."""
    assert preview.SD15.factors[0] == (0.3512, 0.2297, 0.3227)
    assert preview.SD15.factors[3] == (-0.2120, -0.2616, -0.7177)
    assert preview.SDXL.bias == (0.1084, -0.0175, -0.0011)
    assert preview.SD3.factors[15] == (-0.1448, -0.1463, -0.1189)
    assert preview.SD3.bias == (0.2394, 0.2135, 0.1925)
    assert (preview.SD3.scale, preview.SD3.shift) == (1.5305, 0.0609)
    assert preview.FLUX.factors[0] == (-0.0346, 0.0244, 0.0681)
    assert preview.FLUX.bias == (-0.0329, -0.0718, -0.0851)
    assert (preview.FLUX.scale, preview.FLUX.shift) == (0.3611, 0.1159)
    assert [preview.latent_format(f).taesd for f in ("sd1", "sdxl", "sd3", "flux-dev")] == [  # type: ignore[union-attr]
        "taesd",
        "taesdxl",
        "taesd3",
        "taef1",
    ]


def test_known_map_follows_the_vaes_own_scaling():
    """A VAE scaling its latents otherwise than ComfyUI's format: the same raw latent previews the same colours."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(16, 5, 7)).astype(np.float32)  # unscaled latent
    comfy = preview.known_previewer(preview.FLUX, preview.FLUX.scale, preview.FLUX.shift)
    other = preview.known_previewer(preview.FLUX, 0.5, 0.0)
    ours = comfy.project((raw - preview.FLUX.shift) * preview.FLUX.scale)
    theirs = other.project(raw * 0.5)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_sd15_map_previews_a_flat_latent_as_comfyui_does():
    """ComfyUI's preview of a flat SD latent: rgb = z F (+ bias), in [-1, 1] shown as 0..255."""
    found = previewer_for(FamilyShapedVAE(4, 0.18215), "sd1", "hash")
    z = np.array([0.8, -0.3, 0.2, -0.9], np.float32)
    rgb = found.project(np.broadcast_to(z[:, None, None], (4, 2, 3)).copy())
    expected = np.clip((z @ np.asarray(preview.SD15.factors) + 1) * 127.5, 0, 255).astype(np.uint8)
    assert rgb.shape == (2, 3, 3)
    assert (rgb == expected).all()


def test_fitted_map_is_cached_and_reused():
    vae = tiny_vae()
    first = previewer_for(vae, "sd1", "", model_id="tiny-sd")
    assert vae.counted["calls"] > 0  # a tiny VAE of its own: fitted
    files = list(paths.preview_cache_dir().glob("*.json"))
    assert len(files) == 1
    vae.counted["calls"] = 0
    second = previewer_for(vae, "sd1", "", model_id="tiny-sd")
    assert vae.counted["calls"] == 0
    np.testing.assert_allclose(second.weights, first.weights, rtol=1e-6, atol=1e-7)
    # the same map as fitting anew
    np.testing.assert_allclose(first.weights, preview.fit_previewer(vae, 0.18215).weights, rtol=1e-4, atol=1e-5)


def test_cached_map_is_per_model_and_per_weights():
    a = previewer_for(tiny_vae(seed=0), "sd1", "aaaa1111")
    other = tiny_vae(seed=1)
    b = previewer_for(other, "sd1", "aaaa1111")  # another model under the same hash: its own fit
    assert other.counted["calls"] > 0
    assert not np.allclose(a.weights, b.weights)
    assert len(list(paths.preview_cache_dir().glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["not json {", '{"version": 1, "weights": [[1, 2]]}', ""])
def test_damaged_cache_file_is_refitted(damage):
    vae = tiny_vae()
    first = previewer_for(vae, "", "", model_id="tiny")
    (path,) = paths.preview_cache_dir().glob("*.json")
    path.write_text(damage, encoding="utf-8")
    vae.counted["calls"] = 0
    again = previewer_for(vae, "", "", model_id="tiny")
    assert vae.counted["calls"] > 0
    np.testing.assert_allclose(again.weights, first.weights, rtol=1e-4, atol=1e-5)
    assert len(json.loads(path.read_text(encoding="utf-8"))["weights"]) == 5  # repaired: (C + 1) rows


def test_unwritable_cache_still_previews(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(paths, "preview_cache_dir", lambda: blocker / "previews")  # a file is in the way
    vae = tiny_vae()
    found = previewer_for(vae, "sd1", "", model_id="tiny")
    assert found.weights.shape == (5, 3) and vae.counted["calls"] > 0


def test_builtin_model_fits_once_then_loads_from_the_cache():
    from desktop_app.core.modelinfo import builtin_model_path

    vae = AutoencoderKL.from_pretrained(str(builtin_model_path() / "vae")).eval()
    calls = {"n": 0}
    decode = vae.decode

    def counting(*args, **kwargs):
        calls["n"] += 1
        return decode(*args, **kwargs)

    vae.decode = counting  # type: ignore[method-assign]
    first = previewer_for(vae, "sd1", "", model_id="builtin")  # family sd1, its own tiny VAE: never SD's map
    assert calls["n"] == 1
    assert not np.allclose(first.weights[:4], np.asarray(preview.SD15.factors), atol=0.05)
    second = previewer_for(vae, "sd1", "", model_id="builtin")
    assert calls["n"] == 1
    np.testing.assert_allclose(second.weights, first.weights, rtol=1e-6)


# -- TAESD ------------------------------------------------------------------------------------------------------
def save_taesd_folder(name: str, channels: int) -> AutoencoderTiny:
    torch.manual_seed(3)
    tiny = AutoencoderTiny(
        latent_channels=channels,
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
    ).eval()
    tiny.save_pretrained(str(paths.taesd_dir() / name))
    return tiny


def expected_decode(tiny_decoder, latent: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = tiny_decoder(torch.from_numpy(latent)[None])[0].clamp(-1, 1)
    return ((out + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_taesd_folder_gives_full_resolution_previews():
    tiny = save_taesd_folder("taesd", 4)
    vae = FamilyShapedVAE(4, 0.18215)
    found = previewer_for(vae, "sd1", "hash")
    assert isinstance(found, TaesdPreviewer) and vae.calls == 0
    latent = np.random.default_rng(0).normal(size=(4, 6, 10)).astype(np.float32)
    rgb = found.project(latent)
    assert rgb.shape == (48, 80, 3) and rgb.dtype == np.uint8  # 8x the latent: the size of the image
    assert (rgb == expected_decode(tiny.decoder, latent)).all()
    # the slider's cheap map stays at latent resolution, the family's known one
    assert found.linear.project(latent).shape == (6, 10, 3)
    np.testing.assert_allclose(found.weights[:4], np.asarray(preview.SD15.factors), atol=1e-6)


def test_taesd_is_per_family_and_can_be_turned_off():
    save_taesd_folder("taesd", 4)
    assert isinstance(previewer_for(FamilyShapedVAE(4, 0.18215), "sd1", "h"), TaesdPreviewer)
    assert not isinstance(previewer_for(FamilyShapedVAE(4, 0.13025), "sdxl", "h"), TaesdPreviewer)  # no taesdxl
    assert not isinstance(previewer_for(FamilyShapedVAE(4, 0.18215), "sd1", "h", taesd="off"), TaesdPreviewer)


def test_comfyui_single_decoder_file_for_flux():
    """ComfyUI's models/vae_approx/taef1_decoder.safetensors: an nn.Sequential whose layer 0 is the clamp."""
    from diffusers.models.autoencoders.vae import DecoderTiny
    from safetensors.torch import save_file

    torch.manual_seed(5)
    decoder = DecoderTiny(16, 3, (3, 3, 3, 1), (64, 64, 64, 64), 2, "relu", "nearest").eval()
    comfy_keys = {}
    for key, value in decoder.state_dict().items():
        _, index, rest = key.split(".", 2)  # layers.N.rest -> (N + 1).rest
        comfy_keys[f"{int(index) + 1}.{rest}"] = value.contiguous()
    save_file(comfy_keys, str(paths.taesd_dir() / "taef1_decoder.safetensors"))
    found = previewer_for(FamilyShapedVAE(16, 0.3611, 0.1159), "flux-dev", "h")
    assert isinstance(found, TaesdPreviewer)
    latent = np.random.default_rng(1).normal(size=(16, 4, 4)).astype(np.float32)
    rgb = found.project(latent)
    assert rgb.shape == (32, 32, 3)
    assert (rgb == expected_decode(decoder, latent)).all()


def test_damaged_taesd_file_falls_back_to_the_known_map():
    (paths.taesd_dir() / "taesd3_decoder.pth").write_bytes(b"not a checkpoint")
    found = previewer_for(FamilyShapedVAE(16, 1.5305, 0.0609), "sd3", "h")
    assert isinstance(found, TaesdPreviewer)
    latent = np.zeros((16, 3, 5), np.float32)
    assert found.project(latent).shape == (3, 5, 3)  # the linear map, no exception
    assert (found.project(latent) == found.linear.project(latent)).all()


def test_taesd_loads_once_across_threads(monkeypatch):
    save_taesd_folder("taesd", 4)
    found = previewer_for(FamilyShapedVAE(4, 0.18215), "sd1", "h")
    loads = []
    real = preview.load_taesd_decoder
    monkeypatch.setattr(preview, "load_taesd_decoder", lambda path: loads.append(path) or real(path))
    latent = np.random.default_rng(2).normal(size=(4, 4, 4)).astype(np.float32)
    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: out.append(found.project(latent))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all(o.shape == (32, 32, 3) and (o == out[0]).all() for o in out)


def test_trajectory_with_a_taesd_previewer_pickles():
    save_taesd_folder("taesd", 4)
    found = previewer_for(FamilyShapedVAE(4, 0.18215), "sd1", "h")
    latent = np.random.default_rng(3).normal(size=(1, 4, 4, 6)).astype(np.float32)  # (B, C, h, w)
    assert found.project(latent[0]).shape == (32, 48, 3)  # the decoder is loaded now
    traj = Trajectory(timesteps=[999, 500], xt=[latent, latent], x0=[latent, latent], previewer=found, model="m")
    back = pickle.loads(pickle.dumps(traj))
    assert isinstance(back.previewer, TaesdPreviewer) and back.previewer._decoder is None
    assert back.previews(1, "x0").shape == (4, 6, 3)  # the slider's cheap map
    assert back.previewer.project(latent[0]).shape == (4, 6, 3)  # unpickled: the linear map, no weights loaded
    assert (back.previews(1) == traj.previews(1)).all()
