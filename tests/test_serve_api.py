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


@pytest.mark.parametrize("body, status, param, code, words", [
    (b"{not json", 400, None, "invalid_json", "not valid JSON"),
    (b"[1, 2]", 400, None, "invalid_type", "JSON object"),
    (b'{"prompt": "x", "guidance_scale": NaN}', 400, None, "invalid_json", "not valid JSON"),
    ({"n": 1}, 400, "prompt", "missing_required_parameter", "missing required parameter: prompt"),
    ({"prompt": 5}, 400, "prompt", "invalid_type", "invalid type for prompt"),
    ({"prompt": "x", "n": "2"}, 400, "n", "invalid_type", "invalid type for n"),
    ({"prompt": "x", "n": True}, 400, "n", "invalid_type", "invalid type for n"),
    ({"prompt": "x", "nn": 2}, 400, "nn", "unknown_parameter", "unrecognized request argument supplied: nn"),
    ({"prompt": "x", "quality": "ultra"}, 400, "quality", "invalid_value", "invalid value for quality"),
    ({"prompt": "x", "background": "transparent"}, 400, "background", "invalid_value", "'opaque' or 'auto'"),
    ({"prompt": "x", "output_format": "gif"}, 400, "output_format", "invalid_value", "'png', 'jpeg' or 'webp'"),
    ({"prompt": "x", "frame_count": 4}, 400, "frame_count", "unsupported_value", "GIF output"),
    ({"prompt": "x", "svg": {"model": "m"}}, 400, "svg", "unsupported_value", "SVG output"),
    ({"prompt": "x", "output_compression": 101}, 400, "output_compression", "invalid_value", "less than or equal"),
    ({"prompt": "x", "partial_images": 4}, 400, "partial_images", "invalid_value", "less than or equal to 3"),
    ({"prompt": ""}, 400, "prompt", "invalid_value", "at least 1 character"),
    ({"prompt": "   "}, 400, "prompt", "invalid_value", "must not be empty"),
    ({"prompt": "y" * 2001}, 400, "prompt", "invalid_value", "limit is 2000"),
    ({"prompt": "x", "n": 11}, 400, "n", "invalid_value", "less than or equal to 10"),
    ({"prompt": "x", "n": 0}, 400, "n", "invalid_value", "greater than or equal to 1"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "size", "invalid_value", "not supported"),
    ({"prompt": "x", "size": "big"}, 400, "size", "invalid_value", "invalid value for size"),
    ({"prompt": "x", "response_format": "url"}, 400, "response_format", "invalid_value", "'b64_json'"),
    ({"prompt": "x", "model": "dall-e-3"}, 404, "model", "model_not_found", "does not exist"),
    ({"prompt": "x", "num_steps": 1}, 400, "num_steps", "invalid_value", "between 2 and 100"),  # the SDE minimum
    ({"prompt": "x", "num_steps": 10**30}, 400, "num_steps", "invalid_value", "between 2 and 100"),
    ({"prompt": "x", "guidance_scale": -0.5}, 400, "guidance_scale", "invalid_value", "between 0.0 and 20.0"),
    ({"prompt": "x", "guidance_scale": 1e300}, 400, "guidance_scale", "invalid_value", "between 0.0 and 20.0"),
    (b'{"prompt": "x", "guidance_scale": 1e999}', 400, "guidance_scale", "invalid_value", "finite number"),
    ({"prompt": "x", "parallel_tokens": 17}, 400, "parallel_tokens", "invalid_value", "between 1 and 16"),
    ({"prompt": "x", "seed": -1}, 400, "seed", "invalid_value", "greater than or equal to 0"),
])
def test_bad_input_gets_its_status_and_a_clear_message(body, status, param, code, words):
    err = refused(body)
    assert (err.status, err.param, err.code) == (status, param, code)
    assert words in err.message
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error", "param": param,
                                    "code": code}}


def sdk_params() -> set[str]:
    """Every field the installed openai SDK may send to images.generate."""
    from openai.types import image_generate_params as p

    return set(p.ImageGenerateParamsNonStreaming.__annotations__) | set(p.ImageGenerateParamsStreaming.__annotations__)


def test_every_sdk_parameter_is_honoured_ignored_or_refused():
    """A field a new SDK adds fails here until it is put in one of the three sets."""
    from pipelines.serve.api import EXTENSIONS, HONOURED, IGNORED, REFUSED

    sets = [HONOURED, IGNORED, set(REFUSED)]
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # disjoint
    assert set().union(*sets) == sdk_params()
    assert set(ImageRequest.model_fields) == sdk_params() | EXTENSIONS
    # Honoured: each changes the job (or, for stream/partial_images, the transport: test_serve_openai.py).
    base = job_of({"prompt": "x", "seed": 1})
    assert (job_of({"prompt": "x", "n": 10}).n, job_of({"prompt": "x", "size": "auto"}).width) == (10, 112)
    assert job_of({"prompt": "x", "output_format": "webp", "output_compression": 40}).output_compression == 40
    assert job_of({"prompt": "x", "model": "tiny", "response_format": "b64_json", "background": "opaque",
                   "stream": False, "partial_images": 0, "seed": 1}) == base
    # Ignored: the same job, and named for the response header.
    ignored = {"style": "vivid", "moderation": "low", "user": "u1", "safety_identifier": "h", "complexity": "high"}
    assert set(ignored) == IGNORED
    req = parse_body(json.dumps({"prompt": "x", "seed": 1, **ignored}).encode())
    assert to_job(req, Limits(), INFO) == base and req.ignored() == sorted(IGNORED)
    # Refused: any value but null.
    for name in REFUSED:
        assert refused({"prompt": "x", name: 1 if name != "svg" else {}}).param == name
        assert job_of({"prompt": "x", "seed": 1, name: None}) == base


@pytest.mark.parametrize("quality, steps", [("low", 15), ("medium", 30), ("auto", 30), ("standard", 30),
                                            ("high", 60), ("hd", 60), ("xhigh", 90), ("max", 100)])
def test_quality_maps_to_flow_steps(quality, steps):
    job = job_of({"prompt": "x", "quality": quality})
    assert job.num_steps == steps and job.quality == {"standard": "medium", "hd": "high"}.get(quality, quality)
    assert job_of({"prompt": "x", "quality": "low", "num_steps": 7}).num_steps == 7  # explicit steps win
    assert job_of({"prompt": "x", "quality": "low"}, Limits(max_num_steps=2)).num_steps == 2


def test_openapi_limits_fill_the_deployment_limits_in():
    from pydantic.json_schema import models_json_schema

    from pipelines.serve.api import openapi_limits

    def props_of(limits: Limits, info: ModelInfo | None = None) -> dict:
        _, defs = models_json_schema([(ImageRequest, "validation")], ref_template="#/components/schemas/{model}")
        return openapi_limits({"components": {"schemas": defs["$defs"]}}, limits, info)[
            "components"]["schemas"]["ImageRequest"]["properties"]

    props = props_of(Limits(max_n=3, max_prompt_chars=50, sizes=["112x112"]))
    assert props["prompt"]["maxLength"] == 50 and props["n"]["anyOf"][0]["maximum"] == 3
    assert props["size"]["anyOf"][0]["enum"] == ["112x112", "auto"]
    assert props["quality"]["anyOf"][0]["enum"][:3] == ["low", "medium", "high"]
    # What `to_job` refuses is outside the schema (schemathesis sent each of these as valid data):
    assert props["prompt"]["pattern"] == r"[^ \t\n\r\f\v]"  # "   " is an empty prompt
    assert job_of({"prompt": "\x1c"}).prompt == "\x1c"  # the pattern's text (Python's strip() took it: 400)
    assert all(props[name]["type"] == "null" for name in ("frame_count", "frame_duration_ms", "svg"))
    served = props_of(Limits(sizes=["112x112", "56x112"]), INFO)  # the model's: its steps, its tokens
    assert served["num_steps"]["anyOf"][0]["minimum"] == 2 and served["parallel_tokens"]["anyOf"][0]["maximum"] == 16
    assert props_of(Limits(), INFO)["size"]["anyOf"][0]["enum"] == ["112x112", "auto"]  # its native size
    assert "enum" not in props_of(Limits())["size"]["anyOf"][0]  # no model known: the pattern only


def test_integral_numbers_are_integers_as_in_json_schema():
    """schemathesis sent output_compression 31.0 (a JSON Schema integer) and got a 400; and the largest
    seed the schema allowed, 2**63 - 1, which its double turned into 2**63."""
    job = job_of({"prompt": "x", "n": 2.0, "num_steps": 3.0, "seed": 7.0, "output_compression": 31.0})
    assert (job.n, job.num_steps, job.seed, job.output_compression) == (2, 3, 7, 31)
    assert isinstance(job.n, int)
    assert job_of({"prompt": "x", "seed": 2**53 - 1}).seed == 2**53 - 1
    assert refused({"prompt": "x", "seed": 2**53}).param == "seed"  # a double cannot tell 2**53 + 1 from it
    for value in (2.5, "2", True):
        assert (refused({"prompt": "x", "n": value}).code) == "invalid_type"


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
    with pytest.raises(ValueError, match="max_n must be between 1 and 10"):
        Limits.from_dict({"max_n": 11})


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
