"""The command-line convention (README "The command line"), without a Ray cluster: `--out` for
outputs, `--set` for config overrides, flag = config key, `--address` on every command that uses
Ray, old spellings as hidden aliases (or refused with the new name where they now mean something
else), and every user error as one `error:` line with exit status 2 (usage) or 1 (refused at run
time)."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from ray_jobs._entry import build_parser
from ray_jobs.cli import COMMANDS, main
from test_cluster_manifests import REPO

MODEL, OUT = "/nonexistent/pipe", "/nonexistent/out"


def parse(command: str, argv: list[str]):
    module = importlib.import_module(f"ray_jobs.{COMMANDS[command][0]}")
    return build_parser(module, f"vgt {command}").parse_args(argv)


def usage_error(argv: list[str], capsys) -> str:
    """argparse's refusal: exit 2, the usage, then exactly one `error:` line (returned)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def one_line_error(argv: list[str], status: int, capsys) -> str:
    """A refusal from the command itself: exit `status`, one `error: ...` line on stderr, nothing else."""
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


GENERATE = ["--model", MODEL, "--out", OUT, "--prompt", "a cat"]

# (command, argv with the new flag, argv with the old spelling, destination, value)
ALIASES = [
    ("generate", GENERATE + ["--guidance-scale", "3"], GENERATE + ["--guidance", "3"], "guidance_scale", 3.0),
    ("generate", GENERATE + ["--parallel-tokens", "16"], GENERATE + ["--parallel", "16"], "parallel_tokens", 16),
    ("prep", ["--input", "a.tar", "--preset", "tiny", "--out", "o"],
     ["--input", "a.tar", "--preset", "tiny", "--output", "o"], "out", "o"),
    ("prep-latents", ["--data", "d", "--ae", "a", "--out", "o"], ["--data", "d", "--ae", "a", "--output", "o"],
     "out", "o"),
    ("serve", ["--model", "m", "--num-gpus", "0.5"], ["--model", "m", "--gpus", "0.5"], "num_gpus", 0.5),
    ("serve", ["--model", "m", "--num-gpus", "auto"], ["--model", "m", "--gpus", "auto"], "num_gpus", "auto"),
    ("eval", ["recon", "--ae", "a", "--data", "d", "--out", "r.json"],
     ["recon", "--ae", "a", "--data", "d", "--json", "r.json"], "out", "r.json"),
    ("bench", ["--out", "rows.json"], ["--json", "rows.json"], "out", "rows.json"),
]


@pytest.mark.parametrize("command,new,old,dest,value", ALIASES,
                         ids=[f"{c}:{o[-2]}" for c, _, o, _, _ in ALIASES])
def test_old_spelling_is_a_hidden_alias_of_the_new_flag(command, new, old, dest, value):
    assert getattr(parse(command, new), dest) == value
    assert getattr(parse(command, old), dest) == value
    module = importlib.import_module(f"ray_jobs.{COMMANDS[command][0]}")
    parser = build_parser(module, f"vgt {command}")
    helptext = (parser if command != "eval" else parser._subparsers._group_actions[0].choices[new[0]]).format_help()
    assert old[-2] not in helptext.split() and new[-2] in helptext  # not advertised any more


@pytest.mark.parametrize("argv,new", [
    (["generate", *GENERATE, "--steps", "20"], "--num-steps (flow-head steps per token)"),
    (["eval", "shapes", "--model", "http://127.0.0.1:9", "--parallel", "8"], "--concurrency (HTTP requests in flight"),
])
def test_old_spelling_that_now_means_something_else_names_the_new_flag(argv, new, capsys):
    line = usage_error(argv, capsys)
    assert f"{argv[-2]} is now {new}" in line


def test_generate_sampling_flags_are_the_config_keys_and_default_to_none():
    from vgt.config import SampleConfig

    args = parse("generate", GENERATE)
    keys = [f for f in SampleConfig.__dataclass_fields__]
    assert all(getattr(args, k) is None for k in keys)  # None: the folder's config.sample decides
    argv = GENERATE + ["--guidance-scale", "2.5", "--cfg-schedule", "constant", "--num-steps", "7",
                       "--parallel-tokens", "4", "--order", "raster", "--sampler", "ode", "--feed-mode", "parity",
                       "--temperature", "0.5"]
    args = parse("generate", argv)
    assert {k: getattr(args, k) for k in keys} == dict(
        guidance_scale=2.5, cfg_schedule="constant", num_steps=7, parallel_tokens=4, order="raster",
        sampler="ode", feed_mode="parity", temperature=0.5)


def test_eval_shapes_concurrency_and_sampling_flags():
    args = parse("eval", ["shapes", "--model", "http://h:8000", "--concurrency", "6", "--num-steps", "3",
                          "--parallel-tokens", "2", "--guidance-scale", "1"])
    assert (args.concurrency, args.num_steps, args.parallel_tokens, args.guidance_scale) == (6, 3, 2, 1.0)
    assert parse("eval", ["shapes", "--model", "m"]).concurrency is None  # 1 actor / 4 requests, by the model


@pytest.mark.parametrize("argv", [
    ["prep", "--input", "a.tar", "--out", "o", "--preset", "tiny"],
    ["prep-latents", "--data", "d", "--ae", "a"],
    ["serve", "--model", "m"],
    ["eval", "recon", "--ae", "a", "--data", "d"],
    ["eval", "shapes", "--model", "m"],
    ["eval", "geneval-images", "--model", "m", "--prompts", "p", "--out", "o"],
    ["eval", "dpg-images", "--model", "m", "--prompts", "p", "--out", "o"],
    ["bench"],
], ids=lambda argv: " ".join(argv[:2]))
def test_every_command_that_uses_ray_takes_address(argv):
    assert parse(argv[0], argv[1:]).address is None
    assert parse(argv[0], argv[1:] + ["--address", "ray://head:10001"]).address == "ray://head:10001"


@pytest.mark.parametrize("command,argv", [
    ("init", ["--preset", "tiny", "--out", "o"]),
    ("prep", ["--input", "a.tar", "--out", "o", "--preset", "tiny"]),
    ("info", ["--preset", "tiny"]),
    ("convert", ["--from", "reference", "--in", "x.pth", "--out", "o"]),
])
def test_every_command_with_a_preset_takes_set_overrides(command, argv):
    from ray_jobs._entry import execute

    args = parse(command, argv + ["--set", "ar.head.depth=1", "sample.num_steps=3", "--set", "data.min_side=8"])
    assert args.overrides == ["ar.head.depth=1", "sample.num_steps=3", "data.min_side=8"]
    legacy = parse(command, argv + ["ar.head.depth=1"])  # the old positional form, merged at run time
    execute(type("M", (), {"run": staticmethod(lambda a: 0)}), legacy)
    assert legacy.overrides == ["ar.head.depth=1"]


def test_info_applies_overrides(capsys):
    import json

    assert main(["info", "--preset", "tiny", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)[0]
    assert main(["info", "--preset", "tiny", "--json", "--set", "ar.head.depth=1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ar_head_params"] < base["ar_head_params"]


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", MODEL, "--out", OUT, "--n", "0", "--prompt", "x"], "argument --n: must be at least 1"),
    (["generate", *GENERATE, "--num-steps", "zero"], "argument --num-steps: expected a number"),
    (["generate", *GENERATE, "--sampler", "euler"], "argument --sampler: invalid choice"),
    (["serve", "--model", MODEL, "--num-gpus", "some"], "argument --num-gpus: expected 'auto' or a number"),
    (["eval", "shapes", "--model", MODEL, "--concurrency", "0"], "argument --concurrency: must be at least 1"),
    (["prep-latents", "--data", "d", "--ae", "a", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["prep", "--input", "a.tar", "--preset", "tiny"], "--out is required"),
    (["prep", "--input", "a.tar", "--preset", "tiny", "--out", "o", "--output", "p"], "not allowed with"),
])
def test_bad_flags_exit_2_with_one_error_line(argv, message, capsys):
    assert message in usage_error(argv, capsys)


@pytest.mark.parametrize("argv,status,message", [
    # usage errors found by the command (exit 2)
    (["generate", "--model", MODEL, "--out", OUT], 2, "no prompts: pass --prompt"),
    (["generate", *GENERATE, "--device", "gpu0"], 2, "is not a torch device"),
    (["init", "--preset", "tiny-qwn", "--out", OUT], 2, "did you mean 'tiny-qwen'"),
    (["prep", "--input", "/nonexistent/a.tar", "--out", OUT, "--preset", "tiny", "--set", "data.nosuch=1"], 2,
     "unknown config key 'data.nosuch'"),
    (["bench", "nosuch"], 2, "unknown benchmark(s) ['nosuch']"),
    (["convert", "--from", "pth", "--in", "x.pth", "--out", "y", "--set", "a=1"], 2, "--set applies to --from reference"),
    # refusals at run time (exit 1): missing folders and files, before any Ray cluster starts
    (["generate", *GENERATE], 1, "is not a vgt pipeline folder"),
    (["generate", "--model", MODEL, "--out", OUT, "--prompts", "/nonexistent/p.txt"], 1, "prompt file"),
    (["serve", "--model", "/nonexistent/pipe"], 1, "is not a vgt pipeline folder"),
    (["eval", "shapes", "--model", MODEL], 1, "does not exist"),
    (["eval", "recon", "--ae", "/nonexistent/ae", "--data", "/tmp"], 1, "does not exist"),
    (["eval", "geneval-images", "--model", "/tmp", "--prompts", "/nonexistent/m.jsonl", "--out", OUT], 1,
     "does not exist"),
    (["prep", "--input", "/nonexistent/a.tar", "--out", OUT, "--preset", "tiny"], 1, "no input files"),
    (["prep-latents", "--data", "/nonexistent/d", "--ae", "/nonexistent/ae"], 1, "not found"),
    (["convert", "--from", "reference", "--in", "/nonexistent/x.pth", "--out", OUT], 1, "does not exist"),
])
def test_user_errors_are_one_line_with_their_exit_status(argv, status, message, capsys):
    assert message in one_line_error(argv, status, capsys)


def test_init_refuses_an_existing_pipeline_with_exit_1(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    line = one_line_error(["init", "--preset", "tiny", "--out", str(tmp_path)], 1, capsys)
    assert "--overwrite" in line


def test_serve_refuses_an_unreadable_config_before_ray(tmp_path, capsys):
    from vgt.pipeline import FORMAT_VERSION

    (tmp_path / "model_index.json").write_text(f'{{"format_version": {FORMAT_VERSION}}}')
    (tmp_path / "serve.yaml").write_text("applications: [\n")
    line = one_line_error(["serve", "--model", str(tmp_path), "--config", str(tmp_path / "serve.yaml")], 1, capsys)
    assert "cannot read Serve config" in line
    line = one_line_error(["serve", "--model", str(tmp_path), "--config", str(tmp_path / "none.yaml")], 1, capsys)
    assert "does not exist" in line


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "pipe")
    assert main(["init", "--preset", "tiny", "--out", path, "--set", "sample.sampler=sde"]) == 0
    return path


@pytest.mark.parametrize("extra,message", [
    (["--height", "10"], "height and width must be at least"),
    (["--num-steps", "1"], "the SDE sampler needs --num-steps >= 2"),
    (["--temperature", "-1"], "--temperature must be >= 0 (got -1.0)"),
])
def test_generate_refuses_values_the_folder_cannot_sample_with(tiny_folder, tmp_path, extra, message, capsys):
    argv = ["generate", "--model", tiny_folder, "--out", str(tmp_path / "o"), "--prompt", "x", *extra]
    assert message in one_line_error(argv, 2, capsys)
    assert not (tmp_path / "o").exists()  # refused before any output


def test_eval_refuses_a_folder_of_another_kind_before_ray(tiny_folder, tmp_path, capsys):
    assert "is not a vgt ae folder" in one_line_error(
        ["eval", "recon", "--ae", tiny_folder, "--data", str(tmp_path)], 1, capsys)
    assert "is not a vgt pipeline folder" in one_line_error(
        ["eval", "geneval-images", "--model", str(tmp_path), "--prompts", tiny_folder, "--out", OUT], 1, capsys)
    assert "a `vgt prep` output" in one_line_error(
        ["eval", "recon", "--ae", f"{tiny_folder}/ae", "--data", str(tmp_path)], 1, capsys)


def test_unknown_command_is_a_usage_error(capsys):
    assert "invalid choice: 'generat'" in usage_error(["generat", "--model", MODEL], capsys)


def test_serve_port_is_checked_by_argparse(capsys):
    assert "expected a TCP port 1-65535" in usage_error(["serve", "--model", MODEL, "--port", "70000"], capsys)


def test_python_m_entry_point_takes_the_same_flags():
    result = subprocess.run([sys.executable, "-m", "ray_jobs.generate", *GENERATE, "--steps", "3"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "python -m ray_jobs.generate: error: --steps is now --num-steps (flow-head steps per token)")
