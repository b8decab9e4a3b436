"""`diffusion-desk edit` with the new controls (issue 15) and every command's precision and memory flags (issue 18):
parsed into the request and the engine's options, and one real Prompt-to-Prompt edit with the built-in model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from desktop_app.cli.main import _request_from_args, build_parser, engine_kwargs, main
from desktop_app.core.infotext import read_png_metadata
from desktop_app.core.requests import EDIT_METHODS, EditConcept, EditRequest


@pytest.fixture()
def source_png(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (250, 250, 250)).save(path)
    return path


def edit_args(source_png, *extra):
    return ["edit", "-p", "a blue circle", "--source-prompt", "a red circle", "-i", str(source_png), "-o", "x.png"] + [
        *extra
    ]


def request_of(argv) -> EditRequest:
    request = _request_from_args(build_parser().parse_args(argv))
    assert isinstance(request, EditRequest)
    request.validate()
    return request


def test_the_prompt_to_prompt_flags_reach_the_request(source_png):
    request = request_of(
        edit_args(
            source_png,
            "--method",
            "ddim",
            "--attention-control",
            "p2p",
            "--cross-replace",
            "80%",
            "--self-replace",
            "0.3",
            "--no-local-blend",
            "--reweight",
            "blue:2, circle:0.5",
        )
    )
    assert (request.method, request.attention_control) == ("ddim", "p2p")
    assert (request.cross_replace, request.self_replace, request.local_blend) == (0.8, 0.3, False)
    assert request.reweight == "blue:2, circle:0.5"
    assert request_of(edit_args(source_png, "--local-blend")).local_blend is True
    # left out: the model's recommended edit settings decide (None), nothing is re-weighted
    plain = request_of(edit_args(source_png))
    assert (plain.method, plain.attention_control, plain.cross_replace, plain.local_blend, plain.reweight) == (
        None,
        None,
        None,
        None,
        "",
    )


def test_every_method_parses_and_concepts_repeat(source_png):
    for method in EDIT_METHODS:
        assert build_parser().parse_args(edit_args(source_png, "--method", method)).method == method
    request = request_of(
        edit_args(
            source_png, "--method", "ledits", "--concept", "+ a blue hat @ 7", "--concept", "- a red scarf @ 5 / 0.8"
        )
    )
    assert request.edit_concepts == (EditConcept("a blue hat", 7.0), EditConcept("a red scarf", 5.0, True, 0.8))


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--cross-replace", "1.5"], "between 0 and 1"),
        (["--self-replace", "lots"], "share of the steps"),
        (["--attention-control", "on"], "invalid choice"),
        (["--method", "sdedit"], "invalid choice"),
    ],
)
def test_bad_values_are_refused_at_the_command_line(source_png, capsys, flags, said):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(edit_args(source_png, *flags))
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_a_concept_without_a_number_is_a_user_error(source_png, tmp_path, capsys):
    code = main(edit_args(source_png, "--method", "ledits", "--concept", "+ a hat @ x", "--no-history"))
    assert code == 2
    err = capsys.readouterr().err
    assert "no number after @" in err and "hint:" in err


@pytest.mark.parametrize("command", ["generate", "img2img", "inpaint", "outpaint", "edit"])
def test_precision_and_memory_flags_on_every_command(command, source_png):
    argv = [command, "-p", "x", "-o", "x.png"]
    argv += {
        "generate": [],
        "img2img": ["-i", str(source_png)],
        "inpaint": ["-i", str(source_png), "--mask", str(source_png)],
        "outpaint": ["-i", str(source_png), "--extend", "left=64"],
        "edit": ["-i", str(source_png)],
    }[command]
    args = build_parser().parse_args(
        argv + ["--dtype", "bf16", "--cpu-offload", "--vae-tiling", "--attention-slicing", "--device", "cpu"]
    )
    kwargs = engine_kwargs(args)
    assert (kwargs["device"], kwargs["dtype"]) == ("cpu", "bf16")
    memory = kwargs["memory"]
    assert memory.cpu_offload and memory.vae_tiling and memory.attention_slicing and not memory.sequential_offload
    auto = engine_kwargs(build_parser().parse_args(argv + ["--sequential-offload"]))
    assert (auto["device"], auto["dtype"]) == (None, None) and auto["memory"].sequential_offload


def test_help_says_what_the_new_flags_do(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: Prompt-to-Prompt on one line
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "--attention-control {off,p2p}",
        "Prompt-to-Prompt",
        "cross-attention maps",
        "self-attention",
        "--local-blend, --no-local-blend",
        '"blue:2"',
        "LEDITS++",
        "--sequential-offload",
        "layer by layer",
        "--dtype {auto,bf16,fp16,fp32}",
    ):
        assert phrase in text, phrase


def test_a_real_prompt_to_prompt_edit_with_the_builtin_model(tmp_path, capsys):
    """The built-in model draws a red circle; the CLI's P2P edit makes it blue and writes how in the PNG."""
    picture = tmp_path / "red.png"
    assert main(["generate", "-p", "a red circle on a white background", "--seed", "3", "--steps", "4"]
                + ["-o", str(picture), "--no-history", "--device", "cpu", "--dtype", "fp32"]) == 0  # fmt: skip
    out = tmp_path / "blue.png"
    argv = [
        "edit",
        "-p",
        "a blue circle on a white background",
        "--source-prompt",
        "a red circle on a white background",
    ]
    argv += ["-i", str(picture), "--method", "direct", "--attention-control", "p2p", "--cross-replace", "0.8"]
    argv += ["--self-replace", "0.4", "--reweight", "blue:2", "--steps", "4", "--seed", "1", "-o", str(out)]
    assert main(argv + ["--no-history", "--device", "cpu"]) == 0
    with Image.open(picture) as a, Image.open(out) as b:
        before, after = np.asarray(a.convert("RGB"), np.int16), np.asarray(b.convert("RGB"), np.int16)
    assert (np.abs(after - before).max(axis=2) > 30).mean() > 0.01  # something changed colour
    info = read_png_metadata(out)
    text = info.parameters
    assert text["Attention control"] == "Prompt-to-Prompt" and text["Re-weight"] == "blue:2"
    assert text["Cross replace"] == "0.8" and text["Self replace"] == "0.4" and text["Mode"] == "edit"
    request = info.request
    assert isinstance(request, EditRequest)
    assert (request.attention_control, request.cross_replace, request.reweight) == ("p2p", 0.8, "blue:2")


def test_editing_one_of_our_pictures_replays_its_run_and_reads_its_prompt(tmp_path, capsys):
    """As in the window: the CLI edit of a picture this app made replays that run's trajectory (target = source
    gives the picture back exactly), and takes the source prompt from the picture when --source-prompt is left out."""
    picture = tmp_path / "made.png"
    assert main(["generate", "-p", "a red circle on a blue background", "--seed", "7", "--steps", "6"]
                + ["-o", str(picture), "--no-history", "--device", "cpu"]) == 0  # fmt: skip
    same = tmp_path / "same.png"
    argv = ["edit", "-p", "a red circle on a blue background", "-i", str(picture), "--steps", "6", "-o", str(same)]
    assert main(argv + ["--no-history", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "Source prompt from the picture's parameters" in err
    assert "invert 6 + denoise" in err  # each phase's own count, not "invert 6/12"
    with Image.open(picture) as a, Image.open(same) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    assert read_png_metadata(same).parameters["Edit source"] == "replayed trajectory"


def test_ledits_runs_on_concepts_alone_and_other_methods_need_a_prompt(tmp_path, capsys):
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(picture)
    out = tmp_path / "out.png"
    argv = ["edit", "-i", str(picture), "--source-prompt", "a red square", "--method", "ledits"]
    argv += ["--concept", "+ a green square", "--concept", "- a red square @ 1", "--steps", "4", "-o", str(out)]
    assert main(argv + ["--no-history", "--device", "cpu"]) == 0 and out.is_file()
    assert main(["edit", "-i", str(picture), "-o", str(out), "--no-history"]) != 0
    assert "An edit needs --prompt" in capsys.readouterr().err
