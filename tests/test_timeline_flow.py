"""The timestep slider on flow models: FlowForwardProcess in closed form, and the window's slider reading sigma for
SD 3.x / Flux where it reads t for SD (pytest-qt, offscreen, a fake engine)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from desktop_app.core.events import Finished
from desktop_app.core.latents import FlowForwardProcess, ForwardProcess, LatentPreviewer, Trajectory, flow_shift
from desktop_app.core.modelinfo import BUILTIN, ModelInfo, model_defaults
from tests.ui_conftest_helpers import (  # noqa: F401  (qloop is a fixture)
    FakeEngine,
    FakeForwardProcess,
    child,
    click_generate,
    make_window,
    qloop,
)

IDENTITY = LatentPreviewer(np.concatenate([np.eye(3, dtype=np.float32), np.zeros((1, 3), np.float32)]))
FLOW_MODEL = "/models/sd3.5-medium"


def flow_process(shift: float = 1.0) -> FlowForwardProcess:
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 3, 5)).astype(np.float32)
    noise = rng.normal(size=(3, 3, 5)).astype(np.float32)
    return FlowForwardProcess(x0=x0, noise=noise, previewer=IDENTITY, model_id="flow", shift=shift)


# -- the closed form ----------------------------------------------------------------------------------------------
def test_flow_forward_process_closed_form():
    fp = flow_process()
    assert (fp.axis, ForwardProcess.axis, fp.num_train_timesteps) == ("sigma", "t", 1000)
    assert fp.sigma(700) == pytest.approx(0.7)
    np.testing.assert_allclose(fp.latent(700), 0.3 * fp.x0 + 0.7 * fp.noise, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fp.latent(0), fp.x0)
    np.testing.assert_allclose(fp.latent(5000), fp.latent(999))  # clamped to the schedule
    assert fp.latent(300).dtype == np.float32
    # closer to the source at small sigma, closer to the noise at large sigma
    assert np.abs(fp.latent(100) - fp.x0).mean() < np.abs(fp.latent(900) - fp.x0).mean()
    assert fp.preview(700).shape == (3, 5, 3)


def test_flow_forward_process_matches_the_schedulers_noising():
    """With the model's shift, latent(t) is what FlowMatchEulerDiscreteScheduler.scale_noise makes at that sigma."""
    fp = flow_process(shift=3.0)
    scheduler: Any = FlowMatchEulerDiscreteScheduler(shift=3.0)  # (its annotations want FloatTensor)
    for index in (1, 250, 500, 900):  # its training schedule: sigmas[i] is the shifted (1000 - i) / 1000
        t = 1000 - index
        sigma = float(scheduler.sigmas[index])
        assert fp.sigma(t) == pytest.approx(sigma, rel=1e-5)
        noised = scheduler.scale_noise(
            torch.from_numpy(fp.x0)[None],
            torch.tensor([float(scheduler.timesteps[index])]),
            torch.from_numpy(fp.noise)[None],
        )[0].numpy()
        np.testing.assert_allclose(fp.latent(t), noised, rtol=1e-4, atol=1e-5)
    assert fp.sigma(500) == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)


def test_flow_shift_of_sd3_and_flux_schedulers():
    """SD 3.x's static shift; Flux's resolution-dependent one, as FluxPipeline computes mu and the scheduler shifts."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert flow_shift(sd3.config, (128, 128)) == 3.0
    flux: Any = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    for latent_size in ((64, 64), (128, 128), (96, 160)):  # 512x512, 1024x1024, 768x1280 images
        mu = calculate_shift((latent_size[0] // 2) * (latent_size[1] // 2), 256, 4096, 0.5, 1.15)
        fp = FlowForwardProcess(np.zeros(1), np.zeros(1), IDENTITY, "flux", shift=flow_shift(flux.config, latent_size))
        for t in (250, 500, 750):
            expected = float(flux.time_shift(mu, 1.0, torch.tensor(t / 1000)))
            assert fp.sigma(t) == pytest.approx(expected, rel=1e-5)
    assert flow_shift(flux.config, (128, 128)) > flow_shift(flux.config, (64, 64)) > 1.0  # larger: noisier


def test_flow_trajectory_axis_and_sigmas():
    x = np.zeros((1, 3, 2, 2), np.float32)
    traj = Trajectory(timesteps=[1000, 750, 250], xt=[x] * 3, x0=[x] * 3, previewer=IDENTITY, axis="sigma")
    assert [traj.sigma(i) for i in range(3)] == [1.0, 0.75, 0.25]
    assert Trajectory().axis == "t"


# -- the window ---------------------------------------------------------------------------------------------------
class FlowFakeEngine(FakeEngine):
    """FakeEngine whose FLOW_MODEL is an SD 3.5 model: sigma forward process, flow trajectories (timestep =
    sigma * 1000, as FlowMatchEulerDiscreteScheduler's)."""

    shift = 3.0

    def preload(self, model):
        if model != FLOW_MODEL:
            return super().preload(model)
        return ModelInfo(
            source=model, model_id="sd3.5-medium", family="sd3", model_hash="", defaults=model_defaults(model)
        )

    def forward_process(self, image, model=None):
        if model != FLOW_MODEL:
            return super().forward_process(image, model)
        fake = FakeForwardProcess(image)
        return FlowForwardProcess(fake.x0, fake.noise, IDENTITY, "sd3.5-medium", shift=self.shift)

    def run(self, request, on_event=None, cancel=None, source=None):
        emit = on_event or (lambda event: None)

        def relay(event):
            trajectory = getattr(getattr(event, "result", None), "trajectory", None)
            if isinstance(event, Finished) and request.model == FLOW_MODEL and trajectory is not None:
                n = len(trajectory)
                trajectory.timesteps = [round(1000 * (1 - i / n)) for i in range(n)]
                trajectory.axis = "sigma"
            emit(event)

        return super().run(request, relay, cancel, source)


@pytest.fixture
def window(qtbot, qloop, tmp_path):
    w = make_window(qtbot, tmp_path / "data", FlowFakeEngine())
    yield w
    w.close()


def choose_model(qtbot, window, source):
    window.prompt_panel.set_model(source, user=True)
    qtbot.waitUntil(lambda: window.models.state() == "ready" and window.models.current() == source, timeout=5000)


def test_slider_reads_sigma_on_a_flow_model_and_t_on_sd(qtbot, window):
    panel, label = window.timestep_panel, window.timestep_panel.label
    slider = child(window, "timestepSlider")
    assert window.timeline.axis == "t" and label.text() == "t: run a job"

    choose_model(qtbot, window, FLOW_MODEL)
    assert window.timeline.family() == "sd3"
    assert window.timeline.axis == "sigma"  # from the model's family, before any source is encoded
    assert label.text() == "σ: run a job"
    assert "σ = 1" in slider.toolTip()

    # before a run: the source's path to noise in closed form, strength = sigma0
    window.set_source_image(Image.new("RGB", (64, 64), (200, 100, 50)))
    window.prompt_panel.set_mode("img2img")
    assert panel.mode == "t0"
    slider.setValue(900)  # the first drag has the worker encode the source
    qtbot.waitUntil(lambda: isinstance(window.timeline._forward, FlowForwardProcess), timeout=5000)
    slider.setValue(700)
    assert label.text() == "σ₀ = 0.70"
    forward = window.timeline._forward
    assert f"starts at σ {forward.sigma(700):.2f}" in label.toolTip()  # the model's shift, 3
    assert panel.t0_button.text() == "Start σ"
    assert (np.asarray(window.canvas.shown_image()) == forward.preview(700)).all()
    slider.setValue(100)
    near = np.abs(np.asarray(window.canvas.shown_image(), np.float64) - (200, 100, 50)).mean()
    slider.setValue(950)
    far = np.abs(np.asarray(window.canvas.shown_image(), np.float64) - (200, 100, 50)).mean()
    assert near < far
    slider.setValue(700)
    assert window.build_request().strength == pytest.approx(0.70)

    # after a run: steps read sigma
    window.prompt_panel.set_mode("generate")
    child(window, "stepsSpin").setValue(4)
    result = click_generate(qtbot, window)
    assert result.trajectory.axis == "sigma"
    slider.setValue(1)
    assert label.text() == "step 2/4 · σ 0.75"
    assert "σ = 0.750" in label.toolTip()

    # back on an SD model: the flow run shown still reads sigma, the next job's start reads t; then as before
    choose_model(qtbot, window, BUILTIN)
    assert window.timeline.axis == "sigma" and window.timeline.start_axis == "t"
    assert panel.t0_button.text() == "Start t"
    result = click_generate(qtbot, window)
    assert window.timeline.axis == "t"
    slider.setValue(1)
    assert label.text() == f"step 2/{len(result.trajectory)} · t {result.trajectory.timesteps[1]}"
    assert panel.t0_button.text() == "Start t"
    window.prompt_panel.set_mode("img2img")
    window.timeline.set_mode("t0")
    slider.setValue(300)
    assert label.text() == "t₀ = 300 · 0.30"
