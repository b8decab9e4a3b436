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
