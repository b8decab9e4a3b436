"""A1111 prompts with A1111's meaning: the text encoder's numbers computed here by hand from A1111's rules.

The tiny model's byte-level tokenizer gives one token per character (the last of a word with `</w>`), so the
expected token ids, chunks and weights are easy to write out; the reference encodes them with the model's own
text encoder and applies A1111's "Original" emphasis (multiply each token's state, restore the chunk's mean).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from desktop_app.core.errors import UserError
from desktop_app.core.events import Notice
from desktop_app.core.requests import GenerateRequest, Img2ImgRequest
from desktop_app.engine.encoding import encode_text, plan_prompts
from desktop_app.engine.prompts import parse_attention, prompt_schedule, strip_network_tags

MAX_LENGTH = 12  # a 10-token chunk between start and end: long prompts and BREAK are short to write


# -- the parser: A1111's documented cases ---------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("[less]", [("less", 1 / 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
        ("red BREAK blue", [("red", 1.0), ("BREAK", -1.0), ("blue", 1.0)]),
    ],
)
def test_emphasis_parses_as_a1111(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ],
)
def test_prompt_editing_schedules_as_a1111(text, expected):
    assert prompt_schedule(text, 10) == expected


def test_lora_tags_leave_the_text():
    parsed = strip_network_tags("a (red:1.3) circle <lora:shapes:0.8>, <lora:Other Name>")
    assert parsed.text == "a (red:1.3) circle , "
    assert [(t.name, t.weight) for t in parsed.loras] == [("shapes", 0.8), ("Other Name", 1.0)]
    with pytest.raises(UserError, match="not a number"):
        strip_network_tags("x <lora:shapes:strong>")
    assert "removed" in strip_network_tags("x <hypernet:h:1>").notices[0]


# -- the numbers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory):
    """Chunks of 10 tokens; the final LayerNorm's bias set as a trained CLIP's is, so its states have a mean
    (a random LayerNorm's average to 0, where A1111's mean restore is not defined: see the zero-mean test)."""
    from tiny_model import build_tiny_sd
    from transformers import CLIPTextModel

    folder = build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-12", max_length=MAX_LENGTH)
    encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    torch.manual_seed(0)
    bias = getattr(encoder, "text_model", encoder).final_layer_norm.bias
    with torch.no_grad():
        bias.copy_(0.3 + 0.1 * torch.randn_like(bias))
    encoder.save_pretrained(str(folder / "text_encoder"))
    return folder


@pytest.fixture()
def loaded(engine, short_model_dir):
    """The short model as the engine holds it now (loading another model replaces it)."""
    return engine.models.get(str(short_model_dir))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _by_hand(loaded, parts, clip_skip: int = 1) -> torch.Tensor:
    """A1111's rule written out: parts [(text, weight) | "BREAK"] -> chunks of 10 tokens framed by start and end,
    padded with end; each chunk encoded alone, multiplied by its weights, rescaled to its unweighted mean."""
    tok, enc = loaded.pipe.tokenizer, loaded.pipe.text_encoder
    length = MAX_LENGTH - 2
    chunks, cur = [], []
    for part in parts:
        if part == "BREAK":
            chunks.append(cur)
            cur = []
            continue
        text, weight = part
        for token in _ids(tok, text):
            if len(cur) == length:
                chunks.append(cur)
                cur = []
            cur.append((token, weight))
    chunks.append(cur)
    out = []
    for chunk in chunks:
        chunk = chunk + [(tok.eos_token_id, 1.0)] * (length - len(chunk))
        ids = torch.tensor([[tok.bos_token_id] + [t for t, _ in chunk] + [tok.eos_token_id]])
        w = torch.tensor([1.0] + [w for _, w in chunk] + [1.0])[None, :, None]
        with torch.no_grad():
            result = enc(ids, output_hidden_states=True)
            z = (
                result.last_hidden_state
                if clip_skip == 1
                else getattr(enc, "text_model", enc).final_layer_norm(result.hidden_states[-clip_skip])
            )
        weighted = z * w
        out.append(weighted * (z.mean() / weighted.mean()))
    return torch.cat(out, dim=1)


def _ours(loaded, text: str, clip_skip=None) -> torch.Tensor:
    with torch.no_grad():
        return encode_text(loaded, text, clip_skip).conditioning.embeds


@pytest.mark.parametrize(
    "text, parts",
    [
        ("a circle", [("a circle", 1.0)]),
        ("a (red:1.3) dot", [("a ", 1.0), ("red", 1.3), (" dot", 1.0)]),
        ("((red)) dot", [("red", 1.21), (" dot", 1.0)]),
        ("[red] dot", [("red", 1 / 1.1), (" dot", 1.0)]),
        (r"a \(red\) dot", [("a (red) dot", 1.0)]),
        ("red BREAK blue", [("red", 1.0), "BREAK", ("blue", 1.0)]),
        ("a red circle on a blue square", [("a red circle on a blue square", 1.0)]),  # 23 tokens: 3 chunks
        ("(a red circle on a:0.5) blue square", [("a red circle on a", 0.5), (" blue square", 1.0)]),
    ],
)
def test_embedding_equals_a1111s_rule_by_hand(loaded, text, parts):
    ours, expected = _ours(loaded, text), _by_hand(loaded, parts)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_weights_keep_each_chunks_mean_and_change_the_states(loaded):
    plain, weighted = _ours(loaded, "a red dot"), _ours(loaded, "a (red:1.5) dot")
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    assert (weighted - plain).abs().max() > 1e-3
    long_ = _ours(loaded, "a red circle on a blue square")
    assert long_.shape[1] == 3 * MAX_LENGTH  # 23 tokens in chunks of 10, concatenated


def test_a_zero_mean_encoder_gets_the_weights_without_the_mean_restore(engine, tiny_model_dir):
    """The default tiny model's (and the built-in model's) states average to ~0: the restore would divide noise by
    noise, so the weights apply alone (A1111's "No norm")."""
    zero_mean = engine.models.get(str(tiny_model_dir))
    tok, enc = zero_mean.pipe.tokenizer, zero_mean.pipe.text_encoder
    ids = [tok.bos_token_id, *_ids(tok, "a "), *_ids(tok, "red"), *_ids(tok, " dot")]
    weights = [1.0] * (1 + len(_ids(tok, "a "))) + [1.5] * len(_ids(tok, "red")) + [1.0] * len(_ids(tok, " dot"))
    pad = tok.model_max_length - len(ids)
    with torch.no_grad():
        z = enc(torch.tensor([ids + [tok.eos_token_id] * pad])).last_hidden_state
    assert z.mean().abs() < 1e-3 * z.abs().mean()
    expected = z * torch.tensor(weights + [1.0] * pad)[None, :, None]
    torch.testing.assert_close(_ours(zero_mean, "a (red:1.5) dot"), expected, rtol=1e-5, atol=1e-6)


def test_clip_skip_2_is_the_penultimate_layer(loaded):
    ours = _ours(loaded, "a red dot", clip_skip=2)
    torch.testing.assert_close(ours, _by_hand(loaded, [("a red dot", 1.0)], clip_skip=2), rtol=1e-5, atol=1e-6)
    assert (ours - _ours(loaded, "a red dot")).abs().max() > 1e-3


def test_positive_and_negative_padded_to_one_chunk_count(loaded):
    plan = plan_prompts(loaded, "a red circle on a blue square", "blur", 4)
    kwargs = plan.kwargs()
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape == (1, 3 * MAX_LENGTH, 32)
    empty = _ours(loaded, "")
    neg = kwargs["negative_prompt_embeds"]
    torch.testing.assert_close(neg[:, :MAX_LENGTH], _ours(loaded, "blur"))
    torch.testing.assert_close(neg[:, MAX_LENGTH:], empty.repeat(1, 2, 1))  # A1111's pad: the empty prompt's chunk


# -- prompt editing through the real pipeline ----------------------------------------------
def _record_conditioning(pipe):
    """The encoder_hidden_states of every UNet call (the positive half under guidance)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        states = kwargs["encoder_hidden_states"]
        seen.append(states[states.shape[0] // 2 :].detach().clone())

    return seen, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def test_prompt_editing_switches_the_conditioning_at_its_step(engine, loaded, short_model_dir):
    seen, handle = _record_conditioning(loaded.pipe)
    try:
        edited = engine.run(GenerateRequest(prompt="a [red:blue:2] dot", model=str(short_model_dir), seed=3, steps=5))
    finally:
        handle.remove()
    red, blue = _ours(loaded, "a red dot"), _ours(loaded, "a blue dot")
    used = ["red" if torch.allclose(s, red) else "blue" if torch.allclose(s, blue) else "?" for s in seen]
    assert used == ["red", "red", "red", "blue", "blue"]  # A1111: steps 0..2 (step <= 2), then the new text
    for single in ("a red dot", "a blue dot"):
        alone = engine.run(GenerateRequest(prompt=single, model=str(short_model_dir), seed=3, steps=5))
        assert np.abs(_pixels(edited) - _pixels(alone)).max() > 0


def test_alternation_switches_every_step_in_img2img(engine, loaded, short_model_dir):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    seen, handle = _record_conditioning(loaded.pipe)
    try:
        engine.run(
            Img2ImgRequest(
                prompt="a [red|blue] dot", model=str(short_model_dir), seed=3, steps=4, strength=1.0, image=image
            )
        )
    finally:
        handle.remove()
    red, blue = _ours(loaded, "a red dot"), _ours(loaded, "a blue dot")
    used = ["red" if torch.allclose(s, red) else "blue" if torch.allclose(s, blue) else "?" for s in seen]
    assert used == ["red", "red", "blue", "red"]  # A1111's [a|b]: steps 0 and 1 take the first


# -- <lora:NAME:W> tags -----------------------------------------------------------------------
@pytest.fixture()
def lora_in_folder(isolated_data_dir, tiny_model_dir):
    """A LoRA for the tiny SD 1.x model in the data folder's LoRA folder, as shapes.safetensors."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from test_lora import _peft_layers

    from desktop_app.core import paths

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    unet, _ = _peft_layers(pipe, 5)
    StableDiffusionPipeline.save_lora_weights(
        str(paths.loras_dir()), unet_lora_layers=unet, weight_name="shapes.safetensors"
    )
    return paths.loras_dir() / "shapes.safetensors"


def test_lora_tag_loads_the_named_lora_like_passing_it(engine, tiny_model_dir, lora_in_folder):
    tagged = engine.run(
        GenerateRequest(prompt="a circle <lora:shapes:0.8>", model=str(tiny_model_dir), seed=4, steps=2)
    )
    explicit = engine.run(
        GenerateRequest(
            prompt="a circle", model=str(tiny_model_dir), seed=4, steps=2, loras=((str(lora_in_folder), 0.8),)
        )
    )
    plain = engine.run(GenerateRequest(prompt="a circle", model=str(tiny_model_dir), seed=4, steps=2))
    # equal pixels: the LoRA is applied at 0.8 and the tag never reaches the text encoder
    assert np.array_equal(_pixels(tagged), _pixels(explicit))
    assert np.abs(_pixels(tagged) - _pixels(plain)).max() > 0
    assert tagged.request.prompt == "a circle <lora:shapes:0.8>"  # the metadata keeps the prompt as written
    assert "shapes" in tagged.info.get("Lora hashes", "")


def test_missing_lora_names_it_and_the_folder(engine, tiny_model_dir, isolated_data_dir):
    from desktop_app.core import paths

    with pytest.raises(UserError) as caught:
        engine.run(GenerateRequest(prompt="a circle <lora:missing:1>", model=str(tiny_model_dir), seed=1, steps=1))
    assert "missing" in caught.value.message and str(paths.loras_dir()) in caught.value.message


def test_bad_syntax_runs_with_notices(engine, tiny_model_dir):
    events = []
    result = engine.run(
        GenerateRequest(prompt="a (red:abc) circle (on blue", model=str(tiny_model_dir), seed=1, steps=1), events.append
    )
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("'abc' is not a number" in n and "literally" in n for n in notices)
    assert any("unclosed '('" in n for n in notices)
    assert result.images and result.notices == notices


def test_cli_generate_with_weights_and_a_lora_tag(tiny_model_dir, tmp_path, lora_in_folder, isolated_data_dir):
    from desktop_app.cli.main import main
    from desktop_app.core.loras import lora_hash

    out = tmp_path / "out.png"
    prompt = "a (red:1.3) circle <lora:shapes:0.8>"
    code = main(
        ["--data-dir", str(isolated_data_dir), "generate", "--prompt", prompt, "--model", str(tiny_model_dir),
         "--seed", "2", "--steps", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and out.is_file()
    with Image.open(out) as image:
        assert isinstance(image, PngImageFile)
        parameters = image.text["parameters"]
    assert parameters.startswith(prompt + "\n")  # A1111 writes the prompt with its tags
    assert "red" in parameters and "Steps: 2" in parameters and "Seed: 2" in parameters
    assert f'Lora hashes: "shapes: {lora_hash(lora_in_folder)}"' in parameters  # found by name, applied


# -- SDXL: both text encoders, as A1111 --------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from test_models_tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def _sdxl_by_hand(loaded, parts):
    """Each encoder: one chunk (these prompts are short), its penultimate layer (A1111's SDXL layers), weights and
    mean restore per encoder; joined along the width; pooled: clip_g's projection of the chunk."""
    zs, pooled = [], None
    for tok, enc in (
        (loaded.pipe.tokenizer, loaded.pipe.text_encoder),
        (loaded.pipe.tokenizer_2, loaded.pipe.text_encoder_2),
    ):
        ids, weights = [tok.bos_token_id], [1.0]
        for text, weight in parts:
            new = _ids(tok, text)
            ids += new
            weights += [weight] * len(new)
        pad = tok.model_max_length - len(ids)
        ids += [tok.eos_token_id] * pad
        weights += [1.0] * pad
        with torch.no_grad():
            out = enc(torch.tensor([ids]), output_hidden_states=True)
        z = out.hidden_states[-2]
        weighted = z * torch.tensor(weights)[None, :, None]
        zs.append(weighted * (z.mean() / weighted.mean()))
        pooled = getattr(out, "text_embeds", pooled)
    return torch.cat(zs, dim=-1), pooled


def test_sdxl_embedding_equals_a1111s_rule_by_hand(engine, sdxl_dir):
    loaded = engine.models.get(str(sdxl_dir))
    with torch.no_grad():
        ours = encode_text(loaded, "a (red:1.4) [dot]").conditioning
    expected, pooled = _sdxl_by_hand(loaded, [("a ", 1.0), ("red", 1.4), (" ", 1.0), ("dot", 1 / 1.1)])
    torch.testing.assert_close(ours.embeds, expected, rtol=1e-5, atol=1e-6)
    assert ours.pooled is not None and pooled is not None
    torch.testing.assert_close(ours.pooled, pooled)


def test_sdxl_prompt_editing_swaps_the_pooled_embedding_too(engine, sdxl_dir):
    loaded = engine.models.get(str(sdxl_dir))
    pooled_seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        text = kwargs["added_cond_kwargs"]["text_embeds"]
        pooled_seen.append(text[text.shape[0] // 2 :].clone())

    handle = loaded.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    events = []
    try:
        engine.run(
            GenerateRequest(prompt="[red:blue:1] dot", model=str(sdxl_dir), seed=1, steps=3, clip_skip=2), events.append
        )
    finally:
        handle.remove()
    with torch.no_grad():
        red = encode_text(loaded, "red dot").conditioning.pooled
        blue = encode_text(loaded, "blue dot").conditioning.pooled
    assert red is not None and blue is not None
    assert [torch.allclose(p, red) for p in pooled_seen] == [True, True, False]
    assert torch.allclose(pooled_seen[2], blue)
    assert any("Clip skip 2 is not applied" in e.message for e in events if isinstance(e, Notice))


def test_edit_inverts_and_regenerates_with_weighted_long_prompts(engine, loaded, short_model_dir):
    from desktop_app.core.requests import EditRequest

    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    source, target = "a red dot", "a (blue:1.4) dot on a long white square"  # 3 chunks: the others are padded
    seen, handle = _record_conditioning(loaded.pipe)
    try:
        engine.run(
            EditRequest(
                prompt=target, source_prompt=source, model=str(short_model_dir), seed=1, steps=4, strength=0.5,
                image=image, method="ddim", guidance=1.0,
            )
        )  # fmt: skip
    finally:
        handle.remove()
    src, tgt = _ours(loaded, source), _ours(loaded, target)
    assert tgt.shape[1] == 3 * MAX_LENGTH
    assert any(torch.allclose(s[:, :MAX_LENGTH], src) for s in seen)  # inversion under the source prompt
    assert any(s.shape == tgt.shape and torch.allclose(s, tgt) for s in seen)  # A1111's weights in the edit
