"""The image service as OpenAI clients see it: error objects for each class of bad input, the SDK's
parameters, /openapi.json. One tiny-preset application for the module (test_serve.py's fixture and
deployment options), with an API key.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time

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
    (b'{"prompt": "\xff"}', 400, None, "invalid_json"),  # not UTF-8 (FastAPI's own 400 had no error object)
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
    # The served model's own limits (found by the fuzzing below as accepted-looking requests refused):
    assert props["size"]["anyOf"][0]["enum"] == ["112x112", "auto"]
    assert props["num_steps"]["anyOf"][0]["minimum"] == 2  # its SDE sampler's minimum
    assert props["parallel_tokens"]["anyOf"][0]["maximum"] == 16  # its 4x4 latent tokens
    assert props["prompt"]["pattern"] == r"[^ \t\n\r\f\v]" and props["frame_count"]["type"] == "null"
    assert set(route["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert route["responses"]["200"]["content"]["text/event-stream"]["schema"]["required"] == ["event", "data"]
    assert "swagger-ui" in httpx.get(f"{service['url']}/docs").text


def test_fastapis_own_refusals_get_openais_error_object(service):
    """Routes and methods that do not exist answer OpenAI's error object too (after the key check)."""
    r = httpx.get(f"{service['url']}/v1/images/generations", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed" and "POST" in r.headers["allow"]
    r = httpx.get(f"{service['url']}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    assert error_of(httpx.get(f"{service['url']}/v1/nothing"))["code"] == "invalid_api_key"


def test_openai_client_streams_partial_and_completed_images(service):
    import openai

    client = openai.OpenAI(base_url=f"{service['url']}/v1", api_key=KEY, max_retries=0)
    settings = {"seed": 5, "parallel_tokens": 4, "num_steps": 2}  # 16 tokens in 4 groups
    events = list(client.images.generate(model="tiny", prompt=PROMPT, n=2, stream=True, partial_images=2,
                                         output_format="png", extra_body=settings))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert len(events) == 6 and events[-2:] == completed  # 2 previews x 2 images, then the 2 images
    assert [e.partial_image_index for e in partial] == [0, 0, 1, 1]
    assert all((e.size, e.quality, e.background, e.output_format) == ("112x112", "auto", "opaque", "png")
               for e in events)
    assert completed[0].usage.output_tokens == 32
    # The completed images are the non-streaming request's (same seed: same latents; one decoder level).
    plain = post(service["url"], {"prompt": PROMPT, "n": 2, **settings}).json()["data"]
    for event, want in zip(completed, plain):
        assert abs(pixels(event.b64_json).astype(int) - pixels(want["b64_json"]).astype(int)).max() <= 1
    # A preview is the image with the tokens not sampled yet at zero: it differs from the final one.
    assert abs(pixels(partial[0].b64_json).astype(int) - pixels(completed[0].b64_json).astype(int)).max() > 1


def test_stream_reports_token_progress_in_comments(service):
    body = {"prompt": PROMPT, "stream": True, "seed": 1, "parallel_tokens": 4, "num_steps": 2}
    with httpx.stream("POST", f"{service['url']}/v1/images/generations", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert [line for line in lines if line.startswith(":")] == [f": progress {t}/16 tokens" for t in (4, 8, 12, 16)]
    assert lines[-2] == "event: image_generation.completed"
    assert json.loads(lines[-1].removeprefix("data: "))["type"] == "image_generation.completed"


def test_a_streaming_client_that_leaves_stops_its_work(service):
    from ray import serve

    sampler = serve.get_deployment_handle("ARSampler", "vgt")
    before = sampler.stats.remote().result()
    body = {"prompt": PROMPT, "stream": True, "n": 4, "num_steps": 100, "parallel_tokens": 1}  # 16 long groups
    with httpx.stream("POST", f"{service['url']}/v1/images/generations", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        first = next(line for line in r.iter_lines() if line)
        assert first == ": progress 1/16 tokens"  # computing; then the client goes away
    deadline = time.monotonic() + 30
    while sampler.stats.remote().result()["aborted"] == before["aborted"]:
        assert time.monotonic() < deadline, "the sampler kept computing for a client that left"
        time.sleep(0.2)
    assert sampler.stats.remote().result()["cancelled"] > before["cancelled"]


CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make chromium`; .ci/run installs it when missing)


def test_playground_in_a_real_browser(service, tmp_path):
    """Headless Chromium loads `/`, generates with an API key (progress and a preview appear, then the
    images with their settings and a download link), and shows a bad input's error as a sentence."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.goto(f"{service['url']}/")
            page.fill("#key", KEY)
            page.fill("#prompt", PROMPT)
            for field, value in {"#n": "2", "#steps": "2", "#tokens": "4", "#seed": "3", "#partials": "1"}.items():
                page.fill(field, value)
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('.result:not(.preview)').length == 2", timeout=60_000)
            # The page's event list: live progress from the stream, the preview after group 2 of 4 (sent
            # before that group's progress; 2 images x 1 preview), then the images.
            assert page.locator("#log li").all_text_contents() == [
                "queued", "tokens 4/16", "preview 1", "preview 1", "tokens 8/16", "tokens 12/16", "tokens 16/16",
                "1/2 images", "2/2 images"]
            assert page.eval_on_selector("#progress", "e => [e.value, e.max]") == [16, 16]
            captions = page.locator(".result .caption").all_inner_texts()
            assert all("seed 3" in c and "steps 2" in c and "tokens/step 4" in c for c in captions)
            href = page.get_attribute(".result a.download", "href")
            served = post(service["url"], {"prompt": PROMPT, "n": 2, "seed": 3, "num_steps": 2,
                                           "parallel_tokens": 4}).json()["data"]
            got = pixels(href.split(",", 1)[1]).astype(int)
            assert min(abs(got - pixels(d["b64_json"]).astype(int)).max() for d in served) <= 1
            page.screenshot(path=str(tmp_path / "playground.png"))
            # A bad input: the service's error as a readable sentence, nothing added.
            page.fill("#size", "999x999")
            page.click("#go")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
            error = page.inner_text("#error")
            assert error == "400 size '999x999' is not supported; supported sizes: ['112x112', 'auto'] (parameter size)"
            assert page.locator(".result").count() == 2
        finally:
            browser.close()


FUZZ_EXAMPLES = 40  # per generation mode; fixed seed below


def test_fuzzed_requests_get_no_500_and_answers_match_the_schema(service):
    """schemathesis over every route of /openapi.json, valid and invalid requests (fixed seed, bounded
    examples), against the running service: no 500, and every status, header and body as declared.
    (Hypothesis drives schemathesis' strategies here: its pytest loader does not run under pytest 9.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, seed, settings, strategies as st

    schema = schemathesis.openapi.from_url(f"{service['url']}/openapi.json")
    seen: list = []

    @given(st.one_of(schema.as_strategy(mode) for mode in schemathesis.GenerationMode))
    @settings(max_examples=2 * FUZZ_EXAMPLES, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @seed(14)
    def fuzz(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        seen.append((case.method, case.path, response.status_code))

    fuzz()
    generations = {status for method, path, status in seen if path == "/v1/images/generations"}
    assert {200, 400} <= generations  # images made and requests refused: both kinds were exercised
