"""The sampler table: every (sampler, schedule) pair survives A1111 and ComfyUI names both ways, and the names
users type (A1111, Forge, ComfyUI, InvokeAI) land on the right pair."""

from __future__ import annotations

import pytest

from desktop_app.core import samplers
from desktop_app.core.errors import InvalidRequest, UserError
from desktop_app.core.requests import GenerateRequest, sanitize_params

PAIRS = [(s, sched) for s in samplers.SAMPLERS for sched in (None, *samplers.SUPPORTED_SCHEDULES[s])]


@pytest.mark.parametrize(("sampler", "schedule"), PAIRS)
def test_a1111_names_read_back(sampler, schedule):
    name, sched = samplers.a1111_names(sampler, schedule)
    assert samplers.parse_sampler(name, sched) == (sampler, schedule)
    # the old combined form A1111 listed before 1.9 reads back the same
    assert samplers.parse_sampler(samplers.label(sampler, schedule)) == (sampler, schedule)


@pytest.mark.parametrize(("sampler", "schedule"), PAIRS)
def test_comfy_names_read_back(sampler, schedule):
    name, sched = samplers.comfy_sampler(sampler, schedule)
    # ComfyUI has no "the sampler's own": it is written as ComfyUI's default, "normal"
    assert samplers.from_comfy(name, sched) == (sampler, schedule or "normal")
    assert samplers.parse_sampler(name, sched) == (sampler, schedule or "normal")


@pytest.mark.parametrize(
    ("text", "schedule", "expected"),
    [
        ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
        ("dpm++ 2m karras", None, ("dpmpp_2m", "karras")),
        ("DPM++ 2M", "Karras", ("dpmpp_2m", "karras")),
        ("DPM++ 2M", "Automatic", ("dpmpp_2m", None)),
        ("DPM++ 2M Karras", "Automatic", ("dpmpp_2m", "karras")),
        ("DPM++ 2M Karras", "exponential", ("dpmpp_2m", "exponential")),
        ("DPM++ 2M SDE Exponential", None, ("dpmpp_2m_sde", "exponential")),
        ("DPM++ SDE Karras", None, ("dpmpp_sde", "karras")),
        ("Euler a", None, ("euler_a", None)),
        ("Euler A", None, ("euler_a", None)),
        ("euler_ancestral", "normal", ("euler_a", "normal")),
        ("dpmpp_2m", "karras", ("dpmpp_2m", "karras")),
        ("dpmpp_2m_sde_gpu", "exponential", ("dpmpp_2m_sde", "exponential")),
        ("uni_pc", None, ("unipc", None)),
        ("uni_pc_bh2", "karras", ("unipc", "karras")),
        ("UniPC", None, ("unipc", None)),
        ("lcm", None, ("lcm", None)),
        ("  DDIM ", None, ("ddim", None)),
        ("dpmpp_2m_k", None, ("dpmpp_2m", "karras")),  # InvokeAI
        ("euler_k", None, ("euler", "karras")),
        ("k_euler_a", None, ("euler_a", None)),  # InvokeAI 2.x
        ("DPMSolverMultistepScheduler", None, ("dpmpp_2m", None)),
    ],
)
def test_names_users_write(text, schedule, expected):
    assert samplers.parse_sampler(text, schedule) == expected


@pytest.mark.parametrize(("text", "schedule"), [("Heun", None), ("dpmpp_3m_sde", "karras"), ("", None)])
def test_unknown_sampler_names_the_known_ones(text, schedule):
    with pytest.raises(InvalidRequest) as err:
        samplers.parse_sampler(text, schedule)
    assert "DPM++ 2M" in err.value.hint and "euler_ancestral" in err.value.hint


def test_unknown_schedule_and_impossible_pair():
    with pytest.raises(InvalidRequest, match="schedule type 'beta'"):
        samplers.parse_sampler("Euler", "beta")
    with pytest.raises(UserError) as err:
        samplers.parse_sampler("Euler a", "Karras")
    assert "Euler a" in err.value.message and "Karras" in err.value.message
    assert "DPM++ 2M" in err.value.hint


def test_from_comfy_names_what_it_cannot_use():
    assert samplers.from_comfy("heun", "karras") == (None, "karras")
    assert samplers.from_comfy("euler", "sgm_uniform") == ("euler", None)
    assert samplers.from_comfy("euler_ancestral", "karras") == ("euler_a", None)


def test_labels_list_each_sampler_with_its_schedules():
    rows = samplers.labels()
    shown = [text for _s, _sch, text in rows]
    assert "DPM++ 2M Karras" in shown and "Euler a" in shown and "DDIM" in shown
    assert "Euler a Karras" not in shown
    assert len(set(shown)) == len(shown)
    assert {s for s, _sch, _t in rows} == set(samplers.SAMPLERS)
    for sampler, schedule, text in rows:
        assert samplers.parse_sampler(text) == (sampler, schedule)


def test_requests_check_sampler_and_schedule():
    GenerateRequest(prompt="x", scheduler="dpmpp_2m", schedule="karras").validate()
    with pytest.raises(InvalidRequest, match="schedule type"):
        GenerateRequest(prompt="x", scheduler="dpmpp_2m", schedule="beta").validate()
    with pytest.raises(InvalidRequest, match="no Karras"):
        GenerateRequest(prompt="x", scheduler="ddim", schedule="karras").validate()
    params, notices = sanitize_params({"scheduler": "unipc", "schedule": "karras"})
    assert params == {"scheduler": "unipc", "schedule": "karras"} and not notices
    params, notices = sanitize_params({"schedule": "Karras"})
    assert "schedule" not in params and notices


# -- the engine runs every pair ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "schedule"), PAIRS)
def test_every_pair_runs_and_its_trajectory_ends_at_the_image(engine, tiny_model_dir, sampler, schedule):
    import numpy as np

    result = engine.run(
        GenerateRequest(
            prompt="a red circle", model=str(tiny_model_dir), seed=2, steps=2, scheduler=sampler, schedule=schedule
        )
    )
    traj = result.trajectory
    assert traj is not None and len(traj) == 2
    assert all(np.isfinite(x).all() for x in traj.x0 + traj.xt)
    # x0_hat of the last step is the final latent, so it decodes to the picture the job made
    last = np.asarray(engine.decode_trajectory(traj, 1, "x0"), dtype=np.int16)
    assert np.abs(last - np.asarray(result.images[0], dtype=np.int16)).mean() < 2


def _config(tiny_model_dir):
    import json

    return json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())


def test_schedule_types_change_the_noise_levels(tiny_model_dir):
    import numpy as np

    from desktop_app.engine.sampling import make_scheduler

    config = _config(tiny_model_dir)
    sigmas = {}
    for schedule in ("normal", "karras", "exponential"):
        sched = make_scheduler("dpmpp_2m", schedule, config)
        sched.set_timesteps(10)
        sigmas[schedule] = np.asarray(sched.sigmas[:-1], dtype=np.float64)
    lo, hi = sigmas["karras"][-1], sigmas["karras"][0]
    # Karras et al. (rho 7), computed by hand between the same end points
    ramp = np.linspace(0, 1, 10)
    karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    assert np.allclose(sigmas["karras"], karras, rtol=1e-4)
    # exponential: the log of the noise level falls in equal steps between the same end points
    assert np.allclose(sigmas["exponential"], np.exp(np.linspace(np.log(hi), np.log(lo), 10)), rtol=1e-4)
    # the normal schedule is neither
    assert not np.allclose(sigmas["normal"], karras, rtol=0.05) and sigmas["normal"][-1] > 5 * lo


@pytest.mark.parametrize(
    ("sampler", "cls", "algorithm"),
    [
        ("dpmpp_2m", "DPMSolverMultistepScheduler", "dpmsolver++"),
        ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", "sde-dpmsolver++"),
        ("dpmpp_sde", "DPMSolverSinglestepScheduler", "sde-dpmsolver++"),
        ("unipc", "UniPCMultistepScheduler", None),
        ("lcm", "LCMScheduler", None),
        ("euler_a", "EulerAncestralDiscreteScheduler", None),
    ],
)
def test_samplers_are_diffusers_schedulers(tiny_model_dir, sampler, cls, algorithm):
    from desktop_app.engine.sampling import make_scheduler

    sched = make_scheduler(sampler, None, _config(tiny_model_dir))
    assert type(sched).__name__ == cls
    assert getattr(sched.config, "algorithm_type", None) == algorithm


def test_a_schedule_the_scheduler_cannot_do_names_both(tiny_model_dir):
    from desktop_app.engine.sampling import make_scheduler

    config = _config(tiny_model_dir)
    with pytest.raises(UserError, match="Euler a has no Karras"):
        make_scheduler("euler_a", "karras", config)
    # the model's own scheduler (the tiny one's is a DDIM-like class) with a schedule it has no flag for
    own = config["_class_name"]
    with pytest.raises(UserError, match=f"{own} has no Exponential"):
        make_scheduler(None, "exponential", config)
