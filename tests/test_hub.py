"""vgt folders on the Hugging Face Hub (`vgt.hub`, `vgt push`): the real huggingface_hub client
against a loopback server answering the Hub's file endpoints (tests/hub_server.py): push a pipeline
and an AE, load them by `owner/name[@revision]` (VGTPipeline, VGTAutoencoder, `vgt generate`), then
again with HF_HUB_OFFLINE=1 from the cache alone; a repo missing offline is one clear line."""
from __future__ import annotations

import json
import os

import pytest

import hub_server
from test_eval_protocols import tiny_pipeline  # noqa: F401  (a fixture: a saved tiny pipeline)


@pytest.fixture(scope="module")
def hub():
    url, state, server = hub_server.start()
    yield url, state
    server.shutdown()


@pytest.fixture
def online(hub, tmp_path, monkeypatch):
    """The Hub client online, against the loopback server, with a fresh cache (conftest sets offline)."""
    from huggingface_hub import constants

    url, state = hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_loopback")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return state


def files_of(folder: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


@pytest.mark.timeout(180)
def test_push_load_by_repo_id_then_offline_from_the_cache(online, tiny_pipeline, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from ray_jobs.cli import main
    from vgt.ae import VGTAutoencoder
    from vgt.hub import resolve
    from vgt.pipeline import VGTPipeline

    assert main(["push", "--in", tiny_pipeline, "--repo", "vgt-test/tiny@v1"]) == 0
    assert main(["push", "--in", os.path.join(tiny_pipeline, "ae"), "--repo", "vgt-test/tiny-ae"]) == 0
    commit_url = capsys.readouterr().out.splitlines()[0]
    assert commit_url.startswith(os.environ["HF_ENDPOINT"] + "/vgt-test/tiny/commit/")
    assert online.repos["vgt-test/tiny"]["v1"][1] == files_of(tiny_pipeline)  # every file, byte for byte

    # online: the CLI and both loaders take the repo id; the snapshot lands in the Hub cache
    out = tmp_path / "images"
    assert main(["generate", "--model", "vgt-test/tiny@v1", "--prompt", "a red circle", "--out", str(out),
                 "--num-steps", "2", "--parallel-tokens", "16"]) == 0
    assert [json.loads(line)["file"] for line in (out / "images.jsonl").read_text().splitlines()] == ["00000.png"]
    snapshot = resolve("vgt-test/tiny@v1")
    assert snapshot.startswith(constants.HF_HUB_CACHE) and files_of(snapshot) == files_of(tiny_pipeline)
    expected = VGTPipeline.from_pretrained(tiny_pipeline)
    ae_online = VGTAutoencoder.from_pretrained("vgt-test/tiny-ae")
    assert ae_online.fingerprint == expected.autoencoder.fingerprint

    # offline, server untouched: everything from the cache it filled
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(online.requests)
    pipe = VGTPipeline.from_pretrained("vgt-test/tiny@v1")
    assert pipe.model.fingerprint == expected.model.fingerprint
    assert pipe.autoencoder.fingerprint == expected.autoencoder.fingerprint
    assert VGTAutoencoder.from_pretrained("vgt-test/tiny-ae").fingerprint == expected.autoencoder.fingerprint
    assert len(online.requests) == before

    # offline and not cached: one line naming the repo and the variable, exit 1, before Ray starts
    capsys.readouterr()
    for argv in (["generate", "--model", "vgt-test/missing", "--prompt", "x", "--out", str(tmp_path / "m")],
                 ["serve", "--model", "vgt-test/missing"],
                 ["serve", "--model", f"a={tiny_pipeline}", "--model", "b=vgt-test/missing"],
                 ["train-ar", "--preset", "tiny", "--stage", "pretrain", "--data", str(tmp_path),
                  "--ae", "vgt-test/missing", "--out", str(tmp_path / "ar")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: vgt-test/missing: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                       "HF_HUB_OFFLINE=1 forbids downloading it (unset HF_HUB_OFFLINE, or fill the cache first)"]


def test_paths_and_uris_are_never_repo_ids(tmp_path, monkeypatch):
    from vgt.hub import parse_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "export").mkdir(parents=True)
    assert parse_repo_id("runs/export") is None  # exists locally: a path
    assert parse_repo_id("s3://bucket/x") is None and parse_repo_id("/abs/path") is None
    assert parse_repo_id("./rel/x") is None and parse_repo_id("a/b/c") is None
    assert parse_repo_id("owner/name") == ("owner/name", None)
    assert parse_repo_id("owner/name@v1.0") == ("owner/name", "v1.0")


def test_online_missing_repo_is_one_line(online, capsys):
    from ray_jobs.cli import main

    assert main(["generate", "--model", "vgt-test/nothing", "--prompt", "x", "--out", "unused"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: vgt-test/nothing: no such Hub repo (or no access to it: log in with `hf auth login` or set HF_TOKEN)"]
