"""Other tools' metadata read through `read_png_metadata` (what the window and the history call): A1111 JPEG /
WebP EXIF, ComfyUI `prompt` / `workflow`, InvokeAI 3+ and 2.x, and a clear message when a file holds none.
The graphs and records are shaped after real files: ComfyUI's default workflow, InvokeAI's metadata nodes."""

from __future__ import annotations

import copy
import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from desktop_app.core.infotext import MetadataError, read_png_metadata
from desktop_app.core.metadata import decode_user_comment, workflow_to_graph

A1111 = (
    "masterpiece, a (red:1.2) fox <lora:fur:0.7>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "fur: 0123456789ab", '
    "Version: v1.10.1"
)


def _png(tmp_path, chunks: dict[str, str], name="x.png"):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path = tmp_path / name
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    return path


def _exif_image(tmp_path, fmt: str, comment: bytes):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    path = tmp_path / f"a1111.{fmt.lower()}"
    Image.new("RGB", (16, 16)).save(path, fmt, exif=exif.tobytes())
    return path


# -- AUTOMATIC1111 / Forge JPEG and WebP ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le"])  # piexif writes big-endian; some tools little
def test_a1111_jpeg_and_webp_exif(tmp_path, fmt, encoding):
    path = _exif_image(tmp_path, fmt, b"UNICODE\0" + A1111.encode(encoding))
    info = read_png_metadata(path)
    assert info.source == "a1111"
    assert info.prompt.startswith("masterpiece, a (red:1.2) fox") and info.negative_prompt == "blurry, lowres"
    request = info.request
    assert request is not None
    assert (request.steps, request.seed, request.guidance, request.width, request.height) == (
        28,
        1234567,
        6.5,
        512,
        768,
    )
    assert (request.scheduler, request.schedule, request.clip_skip) == ("dpmpp_2m", "karras", 2)
    assert info.parameters["Lora hashes"] == "fur: 0123456789ab" and info.model_id == "v1-5-pruned-emaonly"


def test_user_comment_prefixes():
    assert decode_user_comment(b"ASCII\0\0\0Steps: 2") == "Steps: 2"
    assert decode_user_comment(b"UNICODE\0" + "日本語, a".encode("utf-16-be")) == "日本語, a"
    assert decode_user_comment(b"") is None


# -- ComfyUI ------------------------------------------------------------------------------------------------------
COMFY_PROMPT = {  # ComfyUI's default workflow as its `prompt` chunk holds it, with a LoRA loader added
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 156680208700286,
            "steps": 20,
            "cfg": 8,
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "denoise": 1,
            "model": ["10", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
    "6": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", "clip": ["10", 1]},
    },
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    "10": {
        "class_type": "LoraLoader",
        "inputs": {
            "lora_name": "styles/pixel_art.safetensors",
            "strength_model": 0.8,
            "strength_clip": 1,
            "model": ["4", 0],
            "clip": ["4", 1],
        },
    },
}

COMFY_WORKFLOW = {  # the same graph as the editor saves it (`workflow` chunk)
    "last_node_id": 9,
    "last_link_id": 9,
    "nodes": [
        {
            "id": 3,
            "type": "KSampler",
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 1},
                {"name": "positive", "type": "CONDITIONING", "link": 4},
                {"name": "negative", "type": "CONDITIONING", "link": 6},
                {"name": "latent_image", "type": "LATENT", "link": 2},
            ],
            "widgets_values": [42, "randomize", 25, 7.5, "euler_ancestral", "normal", 1],
            "mode": 0,
        },
        {"id": 4, "type": "CheckpointLoaderSimple", "inputs": [], "widgets_values": ["dreamshaper_8.safetensors"]},
        {"id": 5, "type": "EmptyLatentImage", "inputs": [], "widgets_values": [640, 448, 1]},
        {
            "id": 6,
            "type": "CLIPTextEncode",
            "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
            "widgets_values": ["a lighthouse at dusk"],
        },
        {
            "id": 7,
            "type": "CLIPTextEncode",
            "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
            "widgets_values": ["fog"],
        },
    ],
    "links": [
        [1, 4, 0, 3, 0, "MODEL"],
        [2, 5, 0, 3, 3, "LATENT"],
        [3, 4, 1, 6, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"],
        [5, 4, 1, 7, 0, "CLIP"],
        [6, 7, 0, 3, 2, "CONDITIONING"],
    ],
    "version": 0.4,
}


def test_comfyui_prompt_chunk(tmp_path):
    path = _png(tmp_path, {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)})
    info = read_png_metadata(path)
    assert info.source == "comfyui"
    assert info.prompt == "beautiful scenery nature glass bottle landscape, purple galaxy bottle, <lora:pixel_art:0.8>"
    assert info.negative_prompt == "text, watermark"
    request = info.request
    assert request is not None and request.kind == "generate"
    assert (request.steps, request.guidance, request.width, request.height) == (20, 8, 512, 768)
    assert (request.scheduler, request.schedule) == ("dpmpp_2m", "karras")
    assert request.model == "v1-5-pruned-emaonly" and info.model_id == "v1-5-pruned-emaonly.safetensors"
    # ComfyUI seeds go to 2**64; this one does not fit: said, and a random one is used
    assert request.seed is None and any("Seed 156680208700286" in n for n in info.notices)


def test_comfyui_workflow_chunk_alone(tmp_path):
    info = read_png_metadata(_png(tmp_path, {"workflow": json.dumps(COMFY_WORKFLOW)}))
    request = info.request
    assert info.source == "comfyui" and info.prompt == "a lighthouse at dusk" and info.negative_prompt == "fog"
    assert request is not None and (request.seed, request.steps, request.guidance) == (42, 25, 7.5)
    assert (request.scheduler, request.schedule, request.width, request.height) == ("euler_a", "normal", 640, 448)
    assert request.model == "dreamshaper_8"


def test_workflow_graph_skips_muted_nodes():
    workflow = copy.deepcopy(COMFY_WORKFLOW)
    workflow["nodes"][0]["mode"] = 4  # bypassed
    assert "3" not in workflow_to_graph(workflow)


def test_comfyui_two_samplers_read_the_first_pass_and_say_so(tmp_path):
    graph = copy.deepcopy(COMFY_PROMPT)
    graph["11"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "width": 1024, "height": 1536}}
    graph["12"] = {
        "class_type": "KSampler",
        "inputs": {
            **graph["3"]["inputs"],
            "seed": 7,
            "denoise": 0.5,
            "sampler_name": "heun",
            "latent_image": ["11", 0],
        },
    }
    graph["8"]["inputs"]["samples"] = ["12", 0]
    info = read_png_metadata(_png(tmp_path, {"prompt": json.dumps(graph)}))
    notice = next(n for n in info.notices if "2 samplers" in n)
    assert "KSampler #3" in notice and "KSampler #12" in notice and "#3 was read" in notice
    assert info.request is not None and info.request.steps == 20 and info.request.scheduler == "dpmpp_2m"


def test_comfyui_sampler_custom_advanced_through_guider_and_reroute(tmp_path):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/juggernautXL.safetensors"}},
        "2": {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {"text_g": "a castle", "text_l": "a castle", "clip": ["1", 1]},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["1", 1]}},
        "4": {"class_type": "Reroute", "inputs": {"": ["2", 0]}},
        "5": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["3", 0], "cfg": 5.5},
        },
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 99}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m_sde_gpu"}},
        "8": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "exponential", "steps": 30, "denoise": 1},
        },
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "10": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["6", 0],
                "guider": ["5", 0],
                "sampler": ["7", 0],
                "sigmas": ["8", 0],
                "latent_image": ["9", 0],
            },
        },
    }
    info = read_png_metadata(_png(tmp_path, {"prompt": json.dumps(graph)}))
    request = info.request
    assert info.prompt == "a castle" and info.negative_prompt == "ugly"
    assert request is not None and (request.seed, request.steps, request.guidance) == (99, 30, 5.5)
    assert (request.scheduler, request.schedule, request.width) == ("dpmpp_2m_sde", "exponential", 1024)
    assert request.model == "juggernautXL"


def test_comfyui_without_a_sampler_says_so(tmp_path):
    graph = {k: v for k, v in COMFY_PROMPT.items() if k != "3"}
    with pytest.raises(MetadataError, match="no sampler node"):
        read_png_metadata(_png(tmp_path, {"prompt": json.dumps(graph)}))


def test_comfyui_unknown_sampler_and_img2img_are_said(tmp_path):
    graph = copy.deepcopy(COMFY_PROMPT)
    graph["3"]["inputs"].update(sampler_name="heunpp2", scheduler="sgm_uniform", denoise=0.55, latent_image=["13", 0])
    graph["13"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["14", 0], "vae": ["4", 2]}}
    graph["14"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    info = read_png_metadata(_png(tmp_path, {"prompt": json.dumps(graph)}))
    request = info.request
    assert request is not None and request.kind == "img2img" and getattr(request, "strength", None) == 0.55
    assert request.scheduler is None and request.schedule is None
    text = " ".join(info.notices)
    assert "'heunpp2'" in text and "'sgm_uniform'" in text and "source image" in text


# -- InvokeAI -----------------------------------------------------------------------------------------------------
def test_invokeai_3(tmp_path):
    meta = {  # InvokeAI 3.x's metadata_accumulator
        "generation_mode": "txt2img",
        "positive_prompt": "a knight, detailed armour",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 704,
        "seed": 3817243,
        "rand_device": "cpu",
        "cfg_scale": 7.5,
        "steps": 40,
        "scheduler": "dpmpp_2m_sde_k",
        "clip_skip": 1,
        "model": {"model_name": "Unreal_V4.1", "base_model": "sd-1", "model_type": "main"},
        "controlnets": [],
        "loras": [{"lora": {"model_name": "newb_0.1", "base_model": "sd-1"}, "weight": 0.75}],
        "strength": None,
        "init_image": None,
    }
    info = read_png_metadata(_png(tmp_path, {"invokeai_metadata": json.dumps(meta)}))
    request = info.request
    assert info.source == "invokeai" and info.prompt == "a knight, detailed armour <lora:newb_0.1:0.75>"
    assert request is not None and (request.seed, request.steps, request.width, request.height) == (
        3817243,
        40,
        512,
        704,
    )
    assert (request.scheduler, request.schedule, request.clip_skip) == ("dpmpp_2m_sde", "karras", 2)
    assert info.model_id == "Unreal_V4.1" and request.model == "Unreal_V4.1"


def test_invokeai_4_img2img(tmp_path):
    meta = {
        "generation_mode": "sdxl_img2img",
        "positive_prompt": "a harbour at night",
        "negative_prompt": "",
        "model": {"key": "2f1c", "hash": "blake3:ab", "name": "Juggernaut XL v9", "base": "sdxl", "type": "main"},
        "seed": 12,
        "steps": 30,
        "cfg_scale": 5,
        "width": 1024,
        "height": 1024,
        "scheduler": "euler_a",
        "strength": 0.45,
        "app_version": "4.2.7",
    }
    info = read_png_metadata(_png(tmp_path, {"invokeai_metadata": json.dumps(meta)}))
    request = info.request
    assert request is not None and request.kind == "img2img" and getattr(request, "strength", None) == 0.45
    assert request.scheduler == "euler_a" and info.model_id == "Juggernaut XL v9"
    assert any("source image" in n for n in info.notices)


def test_invokeai_2_dream_and_sd_metadata(tmp_path):
    dream = '"a photo of a cat sitting on a sofa [blurry, lowres]" -s 50 -S 42 -W 512 -H 576 -C 7.5 -A k_euler_a'
    info = read_png_metadata(_png(tmp_path, {"Dream": dream}))
    request = info.request
    assert info.prompt == "a photo of a cat sitting on a sofa" and info.negative_prompt == "blurry, lowres"
    assert request is not None and (request.steps, request.seed, request.width, request.height) == (50, 42, 512, 576)
    assert request.guidance == 7.5 and request.scheduler == "euler_a"
    sd_meta = {
        "model": "stable diffusion",
        "model_weights": "stable-diffusion-1.5",
        "app_id": "invoke-ai/InvokeAI",
        "app_version": "2.2.5",
        "image": {
            "prompt": [{"prompt": "old style prompt", "weight": 1.0}],
            "seed": 999,
            "cfg_scale": 7.0,
            "height": 512,
            "width": 512,
            "sampler": "k_lms",
            "steps": 10,
            "type": "txt2img",
        },
    }
    info = read_png_metadata(_png(tmp_path, {"sd-metadata": json.dumps(sd_meta)}, "b.png"))
    assert info.prompt == "old style prompt" and info.request is not None and info.request.seed == 999
    assert info.request.scheduler is None and any("'k_lms'" in n for n in info.notices)


# -- nothing readable ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_file_with_nothing_readable_says_so(tmp_path, fmt):
    path = tmp_path / f"plain.{fmt.lower()}"
    Image.new("RGB", (16, 16)).save(path, fmt)
    with pytest.raises(MetadataError, match="holds no generation parameters") as err:
        read_png_metadata(path)
    assert "ComfyUI" in err.value.hint


@pytest.mark.parametrize(
    "chunks",
    [
        {"prompt": "{not json"},
        {"prompt": "[1, 2]"},
        {"workflow": '{"nodes": 3}'},
        {"invokeai_metadata": "[]"},
        {"Dream": '"unclosed'},
    ],
)
def test_damaged_other_metadata_is_a_metadata_error(tmp_path, chunks):
    with pytest.raises(MetadataError):
        read_png_metadata(_png(tmp_path, chunks))
