"""Textual-inversion embeddings from the embeddings folder, used by name, with A1111's `TI hashes`."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop_app.core import paths
from desktop_app.core.errors import UserError
from desktop_app.core.requests import GenerateRequest
from desktop_app.engine.engine import Engine


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def _write(name: str, tensors: dict[str, torch.Tensor]):
    path = paths.embeddings_dir() / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _run(engine, model, prompt: str, **kw):
    return engine.run(GenerateRequest(prompt=prompt, model=str(model), seed=5, steps=2, **kw))


def test_embedding_changes_the_result_only_when_its_word_is_used(tiny_model_dir):
    without = Engine(device="cpu")  # the folder is empty: "shapey" is plain text
    literal = _run(without, tiny_model_dir, "a shapey circle")
    plain_before = _run(without, tiny_model_dir, "a circle")
    path = _write("Shapey", {"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 3})
    engine = Engine(device="cpu")
    used = _run(engine, tiny_model_dir, "a shapey circle")
    plain = _run(engine, tiny_model_dir, "a circle")
    assert np.abs(_pixels(used) - _pixels(literal)).max() > 0
    assert np.array_equal(_pixels(plain), _pixels(plain_before))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert used.info["TI hashes"] == f"Shapey: {digest[:12]}"  # A1111: sha256 of the file, 12 digits
    assert "TI hashes" not in plain.info


def test_the_encoder_sees_the_embeddings_vectors_not_the_word(engine, tiny_model_dir):
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    _write("tri", {"tri": vectors})
    _run(engine, tiny_model_dir, "tri")  # loads it
    loaded = engine.models.get(str(tiny_model_dir))
    tokenizer, encoder = loaded.pipe.tokenizer, loaded.pipe.text_encoder
    seen = []
    handle = encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0][0].tolist()), with_kwargs=True
    )
    try:
        _run(engine, tiny_model_dir, "a tri dot")
    finally:
        handle.remove()
    ids = tokenizer.convert_tokens_to_ids(["<ti:tri>", "<ti:tri>_1", "<ti:tri>_2"])
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    dot = tokenizer("dot", add_special_tokens=False)["input_ids"]
    assert seen[0][: 1 + len(a) + 3 + len(dot)] == [tokenizer.bos_token_id, *a, *ids, *dot]
    table = encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[ids].detach(), vectors)


def test_loading_is_idempotent_and_stays_in_its_model(engine, tiny_model_dir, tiny_inpaint_model_dir):
    _write("dotty", {"dotty": torch.randn(1, 32, generator=torch.Generator().manual_seed(2))})
    first = _run(engine, tiny_model_dir, "a dotty circle")
    size = len(engine.models.get(str(tiny_model_dir)).pipe.tokenizer)
    second = _run(engine, tiny_model_dir, "a dotty circle")
    assert len(engine.models.get(str(tiny_model_dir)).pipe.tokenizer) == size
    assert np.array_equal(_pixels(first), _pixels(second))
    other = engine.models.get(str(tiny_inpaint_model_dir)).pipe.tokenizer
    assert not [t for t in other.get_vocab() if t.startswith("<ti:")]


def test_embedding_of_another_width_names_it_and_both_widths(engine, tiny_model_dir):
    _write("wide", {"wide": torch.randn(1, 48)})
    with pytest.raises(UserError) as caught:
        _run(engine, tiny_model_dir, "a wide circle")
    assert "'wide'" in caught.value.message and "48" in caught.value.message and "32" in caught.value.message
    _write("xl_only", {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)})
    with pytest.raises(UserError, match="SDXL"):
        _run(engine, tiny_model_dir, "xl_only")
    assert _run(engine, tiny_model_dir, "a circle").images  # an unused misfit is never loaded


def test_pickle_embedding_only_when_pickles_are_allowed(tiny_model_dir):
    path = paths.embeddings_dir() / "pick.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 32) * 3}, "name": "pick"}, path)
    refused = _run(Engine(device="cpu"), tiny_model_dir, "a pick dot")
    allowed = _run(Engine(device="cpu", allow_pickle=True), tiny_model_dir, "a pick dot")
    assert "TI hashes" not in refused.info and allowed.info["TI hashes"].startswith("pick: ")
    assert np.abs(_pixels(refused) - _pixels(allowed)).max() > 0


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    from test_models_tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def test_sdxl_embedding_carries_clip_l_and_clip_g(engine, tiny_sdxl_dir):
    g = torch.Generator().manual_seed(3)
    _write("xlstyle", {"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 48, generator=g)})
    result = _run(engine, tiny_sdxl_dir, "a xlstyle circle")
    assert result.info["TI hashes"].startswith("xlstyle: ")
    loaded = engine.models.get(str(tiny_sdxl_dir))
    for tokenizer in (loaded.pipe.tokenizer, loaded.pipe.tokenizer_2):
        assert tokenizer.convert_tokens_to_ids("<ti:xlstyle>_1") != tokenizer.unk_token_id
    _write("sd1only", {"sd1only": torch.randn(1, 32)})
    with pytest.raises(UserError) as caught:
        _run(engine, tiny_sdxl_dir, "sd1only")
    assert "32" in caught.value.message and "32 + 48" in caught.value.message
