"""Inversion editing on flow models (engine/flow_inversion.py) through Engine.run, on tiny random-weight Flux and SD 3.

Random weights make no pictures, so these test the mechanics: the solvers' reconstruction at target == source
(PSNR against the VAE round trip, beside a plain first-order Euler inversion computed here), their cost in
transformer calls, masks, progress, cancel, exact replay of a generated result and the wrong method's error.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from desktop_app.core.errors import InvalidRequest, JobCancelled, ModelError
from desktop_app.core.events import Cancelled, Failed, Progress
from desktop_app.core.requests import EditRequest, GenerateRequest
from desktop_app.engine.encoding import decode_images, encode_image
from desktop_app.engine.flow_inversion import FlowModel, flow_sigmas

STEPS = 8
SIZE = 64
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from tiny_flow import tiny_flow_dir

    return str(tiny_flow_dir(tmp_path_factory, "flux-dev"))


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    from tiny_flow import tiny_flow_dir

    return str(tiny_flow_dir(tmp_path_factory, "sd3"))


def picture() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (40, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((16, 12, 48, 44), fill=(220, 40, 40))
    draw.rectangle((4, 50, 60, 60), fill=(240, 220, 60))
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def edit(model: str, method: str, **changes) -> EditRequest:
    """An edit of the picture at guidance 1, target == source unless changed."""
    request = EditRequest(
        prompt=PROMPT,
        source_prompt=PROMPT,
        image=picture(),
        steps=STEPS,
        guidance=1.0,
        method=method,
        model=model,
        seed=3,
    )
    return dataclasses.replace(request, **changes)


class CallCounter:
    """Counts transformer forward calls (a forward hook); optionally sets `cancel` at call `stop_at`."""

    def __init__(self, transformer, cancel: threading.Event | None = None, stop_at: int = 0) -> None:
        self.calls = 0
        self.cancel, self.stop_at = cancel, stop_at
        self.handle = transformer.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        if self.cancel is not None and self.calls == self.stop_at:
            self.cancel.set()

    def remove(self) -> None:
        self.handle.remove()


def euler_reconstruction(loaded, image: Image.Image, prompt: str) -> Image.Image:
    """The baseline: plain first-order Euler up the flow ODE and back down, same schedule, no guidance."""
    model = FlowModel(loaded, SIZE, SIZE)
    sigmas = [float(s) for s in flow_sigmas(loaded, STEPS, SIZE, SIZE)]  # descending, ends at 0
    text = model.encode([prompt])
    with torch.inference_mode():
        x = encode_image(loaded, image, (SIZE, SIZE)).float()  # (1, 16, 8, 8)
        up = sigmas[::-1]
        for s_from, s_to in zip(up[:-1], up[1:]):
            x = x + (s_to - s_from) * model.velocity(x, s_from, text, 1.0)
        for s_from, s_to in zip(sigmas[:-1], sigmas[1:]):
            x = x + (s_to - s_from) * model.velocity(x, s_from, text, 1.0)
    return decode_images(loaded, x)[0]


def round_trip(loaded, image: Image.Image) -> Image.Image:
    return decode_images(loaded, encode_image(loaded, image, (SIZE, SIZE)))[0]


# -- reconstruction and cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "bounds"),
    # measured (8 steps, guidance 1): Flux dev RF-Solver 29.0, FireFlow 25.9, Euler 14.7 dB;
    # SD 3: RF-Solver 54.3, FireFlow 55.6, Euler 28.1 dB
    [("flux", {"rf-solver": 26.0, "fireflow": 23.0}), ("sd3", {"rf-solver": 48.0, "fireflow": 48.0})],
)
def test_second_order_inversion_reconstructs_better_than_euler(engine, flux_dir, sd3_dir, family, bounds):
    folder = flux_dir if family == "flux" else sd3_dir
    figures = {}
    for method in ("rf-solver", "fireflow"):
        result = engine.run(edit(folder, method))
        loaded = engine.models.get(folder)
        reference = round_trip(loaded, picture())
        figures[method] = psnr(result.images[0], reference)
        assert result.info["Flow solver"] == {"rf-solver": "RF-Solver", "fireflow": "FireFlow"}[method]
    figures["euler"] = psnr(euler_reconstruction(loaded, picture(), PROMPT), reference)
    print(
        f"{family} reconstruction PSNR vs VAE round trip (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
    )
    for method, bound in bounds.items():
        assert figures[method] >= bound, (method, figures)
        assert figures[method] >= figures["euler"] + 5.0, (method, figures)


def test_fireflow_costs_about_half_of_rf_solver(engine, flux_dir):
    loaded = engine.models.get(flux_dir)
    counts = {}
    for method in ("rf-solver", "fireflow", "rf-inversion"):
        counter = CallCounter(loaded.pipe.transformer)
        try:
            engine.run(edit(flux_dir, method))
        finally:
            counter.remove()
        counts[method] = counter.calls
    print("transformer calls for", STEPS, "steps each way:", counts)
    assert counts["rf-solver"] == 4 * STEPS  # two calls per step, inversion and denoising
    assert counts["fireflow"] == 2 * STEPS + 2  # one per step plus one to start each direction
    assert counts["rf-inversion"] == 2 * STEPS
    assert counts["fireflow"] <= 0.6 * counts["rf-solver"]


# -- masks, trajectory, progress, cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_masked_edit_keeps_every_pixel_outside_the_mask(engine, flux_dir, sd3_dir, family):
    folder = flux_dir if family == "flux" else sd3_dir
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((12, 8, 52, 48), fill=255)
    result = engine.run(edit(folder, "fireflow", prompt="a green star on a blue background", mask=mask, guidance=3.0))
    out = np.asarray(result.images[0].convert("RGB"), dtype=np.int16)
    source = np.asarray(picture(), dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[~outside] - source[~outside]).mean() > 1.0  # the masked area did change
    assert result.info["Mask blur"] == 4


def test_trajectory_is_the_schedule_below_the_depth(engine, flux_dir):
    result = engine.run(edit(flux_dir, "rf-solver", prompt="a green star", strength=0.6))
    loaded = engine.models.get(flux_dir)
    seen: list[int] = []

    def record(pipe, i, t, kwargs):
        seen.append(int(round(float(t))))
        return kwargs

    with torch.inference_mode():  # the model's own pipeline: its timesteps are sigma * 1000
        loaded.pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="latent",
                    guidance_scale=1.0, callback_on_step_end=record)  # fmt: skip
    expected = [t for t in seen if t <= 600]
    trajectory = result.trajectory
    assert trajectory is not None and 0 < len(expected) < STEPS
    assert trajectory.timesteps == expected
    assert result.info["t0"] == expected[0]
    assert all(x.shape == (1, 16, SIZE // 8, SIZE // 8) for x in trajectory.xt + trajectory.x0)
    # x0 = x_t - sigma v: at the last step (sigma ~ 0.2) the prediction is near the image's latent
    final = encode_image(loaded, result.images[0], (SIZE, SIZE)).float().numpy()
    first_gap = np.abs(trajectory.xt[0] - final).mean()
    last_gap = np.abs(trajectory.x0[-1] - final).mean()
    assert last_gap < first_gap


def test_progress_runs_invert_then_denoise_with_one_count(engine, flux_dir):
    events = []
    engine.run(edit(flux_dir, "fireflow", prompt="a green star"), events.append)
    progress = [e for e in events if isinstance(e, Progress) and e.phase in ("invert", "denoise")]
    assert [e.phase for e in progress] == ["invert"] * STEPS + ["denoise"] * STEPS
    assert [e.step for e in progress] == list(range(1, 2 * STEPS + 1))
    assert {e.total for e in progress} == {2 * STEPS}


def test_cancel_stops_within_a_step_and_the_next_job_runs(engine, flux_dir):
    loaded = engine.models.get(flux_dir)
    cancel = threading.Event()
    counter = CallCounter(loaded.pipe.transformer, cancel, stop_at=STEPS * 2 + 3)  # mid-step of the denoising
    events = []
    try:
        with pytest.raises(JobCancelled):
            engine.run(edit(flux_dir, "rf-solver", prompt="a green star"), events.append, cancel)
    finally:
        counter.remove()
    assert counter.calls == STEPS * 2 + 3  # not one transformer call after the cancel
    assert isinstance(events[-1], Cancelled)
    # the value-injection hooks went with the job
    assert not any(m._forward_hooks for name, m in loaded.pipe.transformer.named_modules() if name.endswith("to_v"))
    assert engine.run(edit(flux_dir, "fireflow")).images[0].size == (SIZE, SIZE)


# -- exact replay ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "method"), [("flux", "fireflow"), ("sd3", "rf-solver")])
def test_exact_replay_of_a_generated_flow_result(engine, flux_dir, sd3_dir, family, method):
    folder = flux_dir if family == "flux" else sd3_dir
    generated = engine.run(GenerateRequest(prompt=PROMPT, model=folder, steps=STEPS, seed=11, guidance=2.0, batch=2))
    assert generated.trajectory is not None and len(generated.trajectory) == STEPS
    image = generated.images[1]  # the second image of the batch: its row of the trajectory
    events = []
    same = engine.run(
        edit(folder, method, image=image, guidance=2.0), events.append, source=generated
    )  # target == source: the stored trajectory, replayed
    replayed = psnr(same.images[0], image)
    inverted = psnr(engine.run(edit(folder, method, image=image, guidance=2.0)).images[0], image)
    print(f"{family} reconstruction of a generated image: replay {replayed:.1f} dB, inversion {inverted:.1f} dB")
    assert same.info["Edit source"] == "stored trajectory"
    assert replayed >= 45.0 and replayed > inverted
    progress = [e for e in events if isinstance(e, Progress) and e.phase in ("invert", "denoise")]
    assert [e.phase for e in progress] == ["denoise"] * STEPS  # nothing to invert
    changed = engine.run(edit(folder, method, image=image, prompt="a green star"), source=generated)
    assert changed.info["Edit source"] == "stored trajectory"
    assert psnr(changed.images[0], image) < replayed


def test_a_result_made_with_other_steps_is_inverted_with_a_notice(engine, flux_dir):
    generated = engine.run(GenerateRequest(prompt=PROMPT, model=flux_dir, steps=STEPS - 2, seed=11))
    events = []
    result = engine.run(edit(flux_dir, "fireflow", image=generated.images[0]), events.append, source=generated)
    assert "Edit source" not in result.info
    assert any("inverted it instead" in getattr(e, "message", "") for e in events)


def test_schnell_edits_without_a_guidance_input_at_any_size(engine, tmp_path):
    from tiny_flow import build_tiny_flux

    folder = str(build_tiny_flux(tmp_path / "tiny-flux-schnell", variant="schnell"))
    image = picture().resize((72, 56))  # not a multiple of 16 (the 2x2 packing): worked at less, scaled back
    events = []
    result = engine.run(
        edit(folder, "fireflow", image=image, prompt="a green star", steps=None, batch=2), events.append
    )
    assert result.request.steps == 4 and [im.size for im in result.images] == [(72, 56)] * 2
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))
    assert any("deterministic" in getattr(e, "message", "") for e in events)
    work = (result.request.width or 0, result.request.height or 0)  # the engine's work size, a multiple of 8
    latent = (1, 16, (work[1] - work[1] % 16) // 8, (work[0] - work[0] % 16) // 8)
    assert result.trajectory is not None and result.trajectory.xt[0].shape == latent


# -- the wrong method -----------------------------------------------------------------------------------------------


def test_sd_method_on_flux_is_a_model_error_and_the_next_job_runs(engine, flux_dir, tiny_model_dir):
    events = []
    with pytest.raises(ModelError) as caught:
        engine.run(edit(flux_dir, "direct"), events.append)
    assert "flow model" in caught.value.message and "FireFlow" in caught.value.hint
    assert isinstance(events[-1], Failed)
    with pytest.raises(ModelError):
        engine.run(edit(str(tiny_model_dir), "rf-solver"))
    assert engine.run(edit(flux_dir, "rf-inversion")).info["Edit method"] == "rf-inversion"


def test_a_depth_below_the_first_step_says_the_least_that_works(engine, flux_dir):
    with pytest.raises(InvalidRequest) as caught:
        engine.run(edit(flux_dir, "fireflow", strength=0.1))  # the 8-step schedule's last sigma is 0.184
    assert "below the first step" in caught.value.message and "at least 0.18" in caught.value.hint
    assert engine.run(edit(flux_dir, "fireflow", strength=0.2)).info["t0"] == 184
