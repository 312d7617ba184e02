"""The image service as OpenAI clients see it: error objects for each class of bad input, the SDK's
parameters, /openapi.json. One tiny-preset application for the module (test_serve.py's fixture and
deployment options), with an API key.
"""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from test_serve import KEY, PROMPT, load, pixels, post, service  # noqa: F401  (service: the module's app)


def error_of(r: httpx.Response) -> dict:
    assert r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("body, status, param, code", [
    (b"{oops", 400, None, "invalid_json"),
    (b"[1]", 400, None, "invalid_type"),
    (b"", 400, None, "invalid_type"),  # no body at all
    ({"n": 1}, 400, "prompt", "missing_required_parameter"),
    ({"prompt": 3}, 400, "prompt", "invalid_type"),
    ({"prompt": "x", "n": "2"}, 400, "n", "invalid_type"),
    ({"prompt": "x", "n": 11}, 400, "n", "invalid_value"),
    ({"prompt": "x", "colour": "red"}, 400, "colour", "unknown_parameter"),
    ({"prompt": "x", "background": "transparent"}, 400, "background", "invalid_value"),
    ({"prompt": "x", "frame_count": 3}, 400, "frame_count", "unsupported_value"),
    ({"prompt": "x", "size": "56x56"}, 400, "size", "invalid_value"),
    ({"prompt": "x", "model": "gpt-image-1"}, 404, "model", "model_not_found"),
])
def test_each_class_of_bad_input_gets_openais_error_object(service, body, status, param, code):
    r = post(service["url"], body)
    assert r.status_code == status
    err = error_of(r)
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert err["message"]


def test_auth_comes_before_validation(service):
    """Without the key a caller learns nothing about the request (401, not 400), as OpenAI."""
    for body in ({"prompt": "x", "n": "bad"}, b"{oops", {"prompt": PROMPT}):
        r = post(service["url"], body, key=None)
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"


def test_sdk_parameters_are_honoured_ignored_with_a_note_or_refused(service):
    import openai

    client = openai.OpenAI(base_url=f"{service['url']}/v1", api_key=KEY, max_retries=0)
    raw = client.images.with_raw_response.generate(
        model="tiny", prompt=PROMPT, n=10, size="auto", quality="low", output_format="jpeg", output_compression=30,
        background="opaque", moderation="low", style="natural", user="u-1", response_format="b64_json",
        extra_body={"seed": 3, "num_steps": 2})
    result = raw.parse()
    assert raw.headers["x-vgt-ignored-params"] == "moderation,style,user"
    assert len(result.data) == 10 and result.size == "112x112" and result.output_format == "jpeg"
    assert result.quality == "low" and result.background == "opaque"
    jpegs = [base64.b64decode(d.b64_json) for d in result.data]
    assert all(j[:3] == b"\xff\xd8\xff" for j in jpegs) and pixels(result.data[9].b64_json).shape == (112, 112, 3)
    # output_compression is the JPEG quality: 30 makes smaller files than the default 95.
    same = post(service["url"], {"prompt": PROMPT, "n": 1, "output_format": "jpeg", "seed": 3, "num_steps": 2})
    assert len(jpegs[0]) < len(base64.b64decode(same.json()["data"][0]["b64_json"]))
    assert "x-vgt-ignored-params" not in same.headers
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny", prompt=PROMPT, background="transparent")
    assert err.value.status_code == 400 and err.value.param == "background"
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="gpt-image-1", prompt=PROMPT)
    assert err.value.code == "model_not_found"


def test_openapi_describes_the_request_body_with_its_limits(service):
    schema = httpx.get(f"{service['url']}/openapi.json").json()
    route = schema["paths"]["/v1/images/generations"]["post"]
    ref = route["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    props = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    assert props["prompt"]["maxLength"] == 2000  # the deployment's limit, not OpenAI's 32000
    assert props["n"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert props["output_format"]["anyOf"][0]["enum"] == ["png", "jpeg", "webp"]
    assert props["num_steps"]["anyOf"][0]["maximum"] == 100
    assert {"400", "401", "404", "503"} <= set(route["responses"]) and "422" not in route["responses"]
