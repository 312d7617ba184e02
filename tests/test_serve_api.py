"""The request contract of the image service, without Ray: parsing, limits, grouping, config overrides."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.serve.api import ApiError, ImageRequest, Limits, ModelInfo, SampleJob, parse_body, to_job
from pipelines.serve.config import app_of, load_config, url_of, with_overrides
from pipelines.serve.workers import group_jobs, split
from vgt.config import SampleConfig

INFO = ModelInfo(id="tiny", native_size=(112, 112), stride=28, max_grid=64,
                 sample=SampleConfig(guidance_scale=3.5, num_steps=30, parallel_tokens=32, sampler="sde"))


def job_of(body: dict, limits: Limits = Limits()) -> SampleJob:
    return to_job(parse_body(json.dumps(body).encode()), limits, INFO)


def refused(body, limits: Limits = Limits()) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as err:
        to_job(parse_body(raw), limits, INFO)
    return err.value


def test_defaults_come_from_the_model_and_a_seed_is_drawn():
    job = job_of({"prompt": "  a red cube  "})
    assert (job.prompt, job.n, job.width, job.height, job.grid) == ("a red cube", 1, 112, 112, (4, 4))
    # config.sample's values; its parallel_tokens (32) capped at the 16 latent tokens
    assert (job.guidance_scale, job.num_steps, job.parallel_tokens, job.output_format) == (3.5, 30, 16, "png")
    assert 0 <= job.seed < 2**31
    explicit = job_of({"prompt": "x", "n": 2, "size": "112x112", "seed": 7, "guidance_scale": 1,
                       "num_steps": 3, "parallel_tokens": 4, "output_format": "webp", "model": "tiny",
                       "response_format": "b64_json", "user": "u1"})
    assert (explicit.n, explicit.seed, explicit.guidance_scale, explicit.num_steps, explicit.parallel_tokens) == \
        (2, 7, 1.0, 3, 4)


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (b'{"prompt": "x", "guidance_scale": NaN}', 400, None, "not valid JSON"),
    ({"n": 1}, 422, "prompt", "missing required parameter"),
    ({"prompt": 5}, 422, "prompt", "invalid type"),
    ({"prompt": "x", "n": "2"}, 422, "n", "invalid type"),
    ({"prompt": "x", "n": True}, 422, "n", "invalid type"),
    ({"prompt": "x", "quality": "hd"}, 400, "quality", "unrecognized request argument"),
    ({"prompt": "   "}, 400, "prompt", "must not be empty"),
    ({"prompt": "y" * 2001}, 400, "prompt", "limit is 2000"),
    ({"prompt": "x", "n": 5}, 400, "n", "between 1 and 4"),
    ({"prompt": "x", "n": 0}, 400, "n", "between 1 and 4"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "size", "not supported"),
    ({"prompt": "x", "size": "big"}, 400, "size", "not supported"),
    ({"prompt": "x", "response_format": "url"}, 400, "response_format", "use 'b64_json'"),
    ({"prompt": "x", "output_format": "gif"}, 400, "output_format", "png"),
    ({"prompt": "x", "model": "dall-e-3"}, 404, "model", "does not exist"),
    ({"prompt": "x", "num_steps": 1}, 400, "num_steps", "between 2 and 100"),  # the SDE sampler's minimum
    ({"prompt": "x", "num_steps": 10**30}, 400, "num_steps", "between 2 and 100"),
    ({"prompt": "x", "guidance_scale": -0.5}, 400, "guidance_scale", "between 0.0 and 20.0"),
    ({"prompt": "x", "guidance_scale": 1e300}, 400, "guidance_scale", "between 0.0 and 20.0"),
    ({"prompt": "x", "parallel_tokens": 17}, 400, "parallel_tokens", "between 1 and 16"),
    ({"prompt": "x", "seed": -1}, 400, "seed", "between 0 and"),
])
def test_bad_input_gets_its_status_and_a_clear_message(body, status, param, words):
    err = refused(body)
    assert (err.status, err.param) == (status, param)
    assert words in err.message
    assert err.body()["error"]["message"] == err.message and err.body()["error"]["param"] == param


def test_limits_are_configurable_and_checked():
    limits = Limits.from_dict({"max_n": 8, "sizes": ["112x112", "56x112"], "max_prompt_chars": 10})
    assert job_of({"prompt": "x", "n": 8, "size": "56x112"}, limits).grid == (4, 2)  # (rows, columns)
    assert refused({"prompt": "x" * 11}, limits).status == 400
    with pytest.raises(ValueError, match="unknown limits"):
        Limits.from_dict({"max_images": 3})
    with pytest.raises(ValueError, match="multiples of 28"):
        INFO.check_size("100x100")
    with pytest.raises(ValueError, match="up to 1792"):
        INFO.check_size("1820x28")


def test_jobs_group_by_sampling_settings_and_results_split_back():
    a, b, c = job_of({"prompt": "a", "num_steps": 3}), job_of({"prompt": "b", "num_steps": 5}), \
        job_of({"prompt": "c", "num_steps": 3, "n": 2})
    assert group_jobs([a, b, c]) == [[a, c], [b]]
    parts = split(np.arange(5), [1, 2, 2])
    assert [p.tolist() for p in parts] == [[0], [1, 2], [3, 4]]


def test_schema_is_strict_about_types():
    assert ImageRequest.model_validate({"prompt": "x", "guidance_scale": 3}).guidance_scale == 3.0


def test_config_overrides_touch_only_what_they_name():
    base = load_config()
    assert [d["name"] for d in app_of(base)["deployments"]] == ["ARSampler", "AEDecoder", "Ingress"]
    assert app_of(base)["import_path"] == "pipelines.serve.app:build_app"
    cfg = with_overrides(base, model="/m/tiny", host="127.0.0.1", port=8123,
                         deployments={"ARSampler": {"max_queued_requests": 2}})
    sampler = next(d for d in app_of(cfg)["deployments"] if d["name"] == "ARSampler")
    assert sampler["max_queued_requests"] == 2 and sampler["autoscaling_config"]["min_replicas"] == 1
    assert app_of(cfg)["args"]["model"] == "/m/tiny" and url_of(cfg) == "http://127.0.0.1:8123"
    assert app_of(base)["args"]["model"] != "/m/tiny"  # the loaded config is not modified


def test_app_builder_checks_its_args():
    from pipelines.serve.app import build_app

    with pytest.raises(ValueError, match="needs args.model"):
        build_app({})
    with pytest.raises(ValueError, match=r"unknown vgt serve args \['modle'\]"):
        build_app({"model": "/m", "modle": "/m"})
    with pytest.raises(ValueError, match="unknown limits"):
        build_app({"model": "/m", "limits": {"max_images": 2}})
    assert build_app(app_of(load_config())["args"]) is not None  # the shipped config's args build


def test_cli_refuses_a_folder_that_is_no_pipeline(tmp_path, capsys):
    from ray_jobs import serve as command
    from ray_jobs._entry import main_for

    assert main_for(command, ["--model", str(tmp_path)]) == 1  # refused at run time, before Ray starts
    assert "is not a vgt pipeline folder: model_index.json is missing" in capsys.readouterr().err
