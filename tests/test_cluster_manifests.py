"""cluster/: KubeRay manifests against the operator's CRD schemas (strict), the launcher config
against Ray's own schema, the Serve config, and the Dockerfile's pins against pyproject.toml.

The CRD schema checks read the KubeRay CRDs from the folder named by $VGT_KUBERAY_CRDS (CI sets it);
unset, those checks skip and every other check here still runs.

Run as a script with `--sync` to re-embed cluster/serve.yaml into cluster/kuberay/rayservice.yaml.
"""
from __future__ import annotations

import copy
import functools
import os
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
CRDS_ENV = "VGT_KUBERAY_CRDS"
MANIFESTS = sorted(p.name for p in KUBERAY.glob("*.yaml"))
BEGIN, END = "  # BEGIN serveConfigV2\n  serveConfigV2: |\n", "  # END serveConfigV2\n"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


@functools.cache
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pinned(name: str) -> str:
    """The exact version pyproject.toml pins for a dependency (`name[...]==X`)."""
    from packaging.requirements import Requirement

    for dep in pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        if req.name == name:
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name} must be pinned exactly in pyproject.toml"
            return spec.version
    raise AssertionError(f"{name} not in pyproject.toml dependencies")


IMAGE = f"registry.example.com/vgt:{pyproject()['project']['version']}"


# ---------- strict CRD schemas ----------

def strict(schema: dict) -> dict:
    """What the API server's strict field validation enforces, in jsonschema terms: an object
    that declares `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` is closed; int-or-string and nullable are spelled out.
    Recurses only through schema positions (a field may be called `properties`)."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema and "type" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    return out


def crds_dir() -> Path:
    """The folder of KubeRay CRD YAMLs named by $VGT_KUBERAY_CRDS. Unset or empty: skip (the
    schemas are not part of the repo); set to a folder that lacks them: fail, never skip."""
    value = os.environ.get(CRDS_ENV, "")
    if not value:
        pytest.skip(f"set {CRDS_ENV} to a folder of KubeRay CRD YAMLs ({', '.join(CRD_FILES.values())}) "
                    "to run the CRD schema checks")
    folder = Path(value).expanduser().resolve()
    missing = [name for name in CRD_FILES.values() if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"{CRDS_ENV}={value!r}: " + (f"{', '.join(missing)} not found in {folder}"
                    if folder.is_dir() else f"{folder} is not a folder"), pytrace=False)
    return folder


@pytest.fixture
def crds() -> Path:
    return crds_dir()


# The tests that validate against the CRD schemas; they skip (at setup) without $VGT_KUBERAY_CRDS.
needs_crds = pytest.mark.usefixtures("crds")


@functools.cache
def crd_schema(path: Path) -> dict:
    """The v1 OpenAPI schema of one CRD file."""
    (v1,) = [v for v in load_yaml(path)["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def validator(kind: str, is_strict: bool = True) -> jsonschema.Draft4Validator:
    return _validator(crds_dir() / CRD_FILES[kind], is_strict)


@functools.cache
def _validator(path: Path, is_strict: bool) -> jsonschema.Draft4Validator:
    schema = crd_schema(path)
    return jsonschema.Draft4Validator(strict(schema) if is_strict else schema)


def errors(doc: dict, is_strict: bool = True) -> list[str]:
    """Validation errors of one manifest against its kind's v1 CRD schema, as path: message."""
    assert doc.get("apiVersion") == "ray.io/v1", doc.get("apiVersion")
    found = validator(doc["kind"], is_strict).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def manifest(name: str) -> dict:
    return load_yaml(KUBERAY / name)


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) for the head and every worker group."""
    spec = cluster_spec(doc)
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]


def test_manifest_set_covers_prep_train_and_serve():
    kinds = {name: manifest(name)["kind"] for name in MANIFESTS}
    assert kinds == {"raycluster.yaml": "RayCluster", "rayjob-prep.yaml": "RayJob",
                     "rayjob-prep-latents.yaml": "RayJob", "rayjob-train-ae.yaml": "RayJob",
                     "rayjob-train-ar.yaml": "RayJob", "rayservice.yaml": "RayService"}


@needs_crds
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_crd_strictly(name):
    assert errors(manifest(name)) == []


@needs_crds
@pytest.mark.parametrize("name", MANIFESTS)
def test_misspelled_field_is_rejected(name):
    doc = manifest(name)
    # Deep inside an embedded Pod template: open in the published schema, closed when strict.
    container = pod_templates(doc)[0][1]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    assert errors(doc, is_strict=False) == []
    assert any("'imagePullPolicyy' was unexpected" in e for e in errors(doc)), errors(doc)
    # And at the top of the spec.
    doc = manifest(name)
    doc["spec"]["rayVerison"] = "2.60.0"
    assert any("'rayVerison' was unexpected" in e for e in errors(doc)), errors(doc)


@needs_crds
@pytest.mark.parametrize("name", MANIFESTS)
def test_wrongly_typed_value_is_rejected(name):
    doc = manifest(name)
    # rayStartParams is a map of strings: `ray start` flags are passed as text.
    cluster_spec(doc)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert [e for e in errors(doc) if "rayStartParams/num-cpus: 0 is not of type 'string'" in e]
    doc = manifest(name)
    group = cluster_spec(doc)["workerGroupSpecs"][0]
    group["maxReplicas"] = "eight"
    assert [e for e in errors(doc) if e.endswith("maxReplicas: 'eight' is not of type 'integer'")]


@needs_crds
def test_int_or_string_quantities_accept_both_forms():
    doc = manifest("rayjob-train-ae.yaml")
    limits = pod_templates(doc)[1][1]["containers"][0]["resources"]["limits"]
    limits["nvidia.com/gpu"], limits["cpu"] = "8", 88
    assert errors(doc) == []
    limits["cpu"] = "eighty"  # neither an integer nor a quantity string
    assert [e for e in errors(doc) if "does not match" in e]


def test_crds_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(CRDS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=CRDS_ENV):
        crds_dir()
    # Set but wrong is a mistake to report, never a silent skip.
    monkeypatch.setenv(CRDS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="is not a folder"):
        crds_dir()
    (tmp_path / CRD_FILES["RayCluster"]).write_text("{}")
    monkeypatch.setenv(CRDS_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"{CRD_FILES['RayJob']}, {CRD_FILES['RayService']} not found")):
        crds_dir()


# ---------- what the schema cannot say ----------

@pytest.mark.parametrize("name", MANIFESTS)
def test_versions_and_images_agree_with_pyproject(name):
    doc = manifest(name)
    assert cluster_spec(doc)["rayVersion"] == pinned("ray")
    images = {c["image"] for _, pod in pod_templates(doc) for c in pod["containers"]}
    assert images == {IMAGE}


@pytest.mark.parametrize("name", MANIFESTS)
def test_s3_credentials_come_from_the_secret(name):
    for group, pod in pod_templates(manifest(name)):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env[key], (group, key)
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "vgt-s3", "key": key}


def test_no_inline_secrets_anywhere_in_cluster():
    access_key = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            assert not access_key.search(path.read_text()), path


@pytest.mark.parametrize("name", MANIFESTS)
def test_gpu_groups_request_whole_gpus(name):
    for group, pod in pod_templates(manifest(name)):
        resources = pod["containers"][0]["resources"]
        gpus = resources["limits"].get("nvidia.com/gpu", 0)
        assert resources["requests"] == resources["limits"], group  # Guaranteed QoS
        assert ("gpu" in group) == (gpus > 0), (group, gpus)
        if gpus:
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        # /dev/shm backed by RAM for the object store and NCCL.
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def gpus_per_pod(doc: dict) -> dict[str, int]:
    return {g: pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
            for g, pod in pod_templates(doc)}


def test_training_jobs_run_on_8_gpu_pods_and_serving_autoscales_1_gpu_pods():
    for name in ("rayjob-train-ae.yaml", "rayjob-train-ar.yaml"):
        assert gpus_per_pod(manifest(name)) == {"head": 0, "gpu-train-8x": 8}
    assert gpus_per_pod(manifest("rayjob-prep.yaml")) == {"head": 0, "cpu-prep": 0}
    assert gpus_per_pod(manifest("raycluster.yaml")) == {"head": 0, "cpu-prep": 0, "gpu-train-8x": 8, "gpu-1x": 1}
    service = manifest("rayservice.yaml")
    assert gpus_per_pod(service) == {"head": 0, "gpu-1x": 1}
    spec = cluster_spec(service)
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    # Room for every GPU replica Serve may ask for, and no fewer Pods than its minimum.
    deployments = serve_config()["applications"][0]["deployments"]
    gpu_deps = [d for d in deployments if d["ray_actor_options"].get("num_gpus")]
    assert group["minReplicas"] == sum(d["autoscaling_config"]["min_replicas"] for d in gpu_deps) == 2
    assert group["maxReplicas"] == sum(d["autoscaling_config"]["max_replicas"] for d in gpu_deps) == 6


def rayjobs() -> list[dict]:
    return [d for d in map(manifest, MANIFESTS) if d["kind"] == "RayJob"]


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line (`a && b; c | d` -> [a, b, c, d]), each as argv."""
    import shlex

    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


URI_FLAGS = {"--input", "--output", "--data", "--out", "--ae", "--init"}


def uri_arguments(argv: list[str]) -> list[str]:
    """Values given to the flags that take locations (a `URI=WEIGHT` keeps its URI)."""
    flag, uris = None, []
    for word in argv:
        if word.startswith("--"):
            flag = word
        elif flag in URI_FLAGS:
            uris.append(word.rsplit("=", 1)[0])
    return uris


def test_shell_commands_split_like_a_shell():
    assert shell_commands("python -m a --x 's p' && python -m b;c|d") == [
        ["python", "-m", "a", "--x", "s p"], ["python", "-m", "b"], ["c"], ["d"]]
    assert uri_arguments(["--data", "s3://b/x=3", "s3://b/y", "--num-workers", "8", "--out", "s3://b/o"]) == [
        "s3://b/x", "s3://b/y", "s3://b/o"]


def test_rayjobs_shut_down_and_keep_data_on_s3():
    for doc in rayjobs():
        spec = doc["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        # Code and dependencies come from the image: no runtime_env at all.
        assert "runtimeEnvYAML" not in spec
        for argv in shell_commands(spec["entrypoint"]):
            assert argv[:2] == ["python", "-m"] and argv[2].startswith("ray_jobs."), argv
            uris = uri_arguments(argv)
            assert uris and all(u.startswith("s3://vgt-example/") for u in uris), argv


# ---------- Serve config, embedded in the RayService ----------

def serve_config() -> dict:
    return load_yaml(CLUSTER / "serve.yaml")


def embedded(rayservice_text: str, serve_text: str) -> str:
    """rayservice.yaml with serve.yaml as the literal block between the BEGIN/END markers."""
    start = rayservice_text.index(BEGIN) + len(BEGIN)
    stop = rayservice_text.index(END, start)
    block = "".join(f"    {line}" if line.strip() else "\n" for line in serve_text.splitlines(True))
    return rayservice_text[:start] + block + rayservice_text[stop:]


def test_rayservice_embeds_serve_yaml_verbatim():
    rayservice_text = (KUBERAY / "rayservice.yaml").read_text()
    serve_text = (CLUSTER / "serve.yaml").read_text()
    assert rayservice_text == embedded(rayservice_text, serve_text), (
        "cluster/kuberay/rayservice.yaml is stale: run "
        "`.venv/bin/python tests/test_cluster_manifests.py --sync`")
    assert manifest("rayservice.yaml")["spec"]["serveConfigV2"] == serve_text


def test_serve_config_is_valid_with_three_independently_scaled_deployments():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config())
    (app,) = config.applications
    assert app.import_path == "pipelines.serve.app:build_app"
    # Code comes from the image or the job's working dir: never installs at deploy time.
    assert set(app.runtime_env) <= {"working_dir", "excludes"}
    assert [d.name for d in app.deployments] == ["ARSampler", "AEDecoder", "Ingress"]
    for d in app.deployments:
        scaling = d.autoscaling_config
        assert 1 <= scaling["min_replicas"] < scaling["max_replicas"], d.name
        assert d.max_ongoing_requests > 0 and d.max_queued_requests > 0, d.name
        assert d.ray_actor_options.num_cpus > 0, d.name
    gpus = {d.name: d.ray_actor_options.num_gpus or 0 for d in app.deployments}
    assert gpus == {"ARSampler": 1, "AEDecoder": 1, "Ingress": 0}


# ---------- Ray cluster launcher ----------

def aws_config() -> dict:
    return load_yaml(CLUSTER / "aws.yaml")


def test_aws_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = aws_config()
    validate_config(copy.deepcopy(raw))
    # What `ray up` validates: the config merged with Ray's AWS defaults.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(idle_timeout_minute=5), "'idle_timeout_minute' was unexpected"),
    (lambda c: c["available_node_types"]["cpu_prep"].update(max_workers="8"), "'8' is not of type 'integer'"),
])
def test_aws_yaml_mistakes_fail_rays_validation(mutate, message):
    from ray.autoscaler._private.util import validate_config

    config = aws_config()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate_config(config)


def test_aws_node_types_cover_prep_train_and_serve():
    config = aws_config()
    types = config["available_node_types"]
    resources = {name: t["resources"] for name, t in types.items()}
    assert resources == {"head": {"CPU": 0}, "cpu_prep": {"CPU": 32}, "gpu_train_8x": {"CPU": 96, "GPU": 8},
                         "gpu_serve_1x": {"CPU": 4, "GPU": 1}}
    for name, t in types.items():
        if name != config["head_node_type"]:
            assert t["min_workers"] == 0 < t["max_workers"] <= config["max_workers"], name
            # Workers get no IAM profile from the launcher: S3 access must be configured.
            assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"] == IMAGE
    # Everything is in the image: no installs while nodes start.
    assert config["setup_commands"] == config["head_setup_commands"] == config["worker_setup_commands"] == []


# ---------- Dockerfile ----------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (CLUSTER / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(ln.strip().split(None, 1)) for ln in joined.splitlines() if ln.strip()]


def pip_installs() -> list[str]:
    import shlex

    reqs = []
    for op, args in dockerfile_instructions():
        words = shlex.split(args) if op == "RUN" else []
        if words[:2] == ["pip", "install"]:
            reqs += [w for w in words[2:] if not w.startswith("-")]
    return reqs


def test_dockerfile_base_pins_the_ray_and_python_of_pyproject():
    from packaging.specifiers import SpecifierSet

    (base,) = [args for op, args in dockerfile_instructions() if op == "FROM"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu(\d+)", base)
    assert match, base
    ray_version, major, minor, _cuda = match.groups()
    assert ray_version == pinned("ray")
    assert f"{major}.{minor}" in SpecifierSet(pyproject()["project"]["requires-python"])


def test_dockerfile_pins_agree_with_pyproject_and_install_the_gpu_extra():
    from packaging.requirements import Requirement

    declared = {Requirement(d).name: Requirement(d).specifier for d in pyproject()["project"]["dependencies"]}
    declared.update((Requirement(d).name, Requirement(d).specifier) for d in pyproject()["build-system"]["requires"])
    installs = pip_installs()
    assert ".[gpu]" in installs
    checked = set()
    for req in map(Requirement, (r for r in installs if r != ".[gpu]")):
        if req.name in declared:
            for spec in req.specifier:
                # A pin must lie inside pyproject's range; a range must be pyproject's own.
                ok = declared[req.name].contains(spec.version) if spec.operator == "==" else spec in set(declared[req.name])
                assert ok, (str(req), str(declared[req.name]))
            checked.add(req.name)
    assert {"torch", "setuptools"} <= checked
    # torch is the version CI tests (the Makefile's CPU pin), here as the CUDA wheel.
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"torch=={makefile_torch}" in installs


def test_docker_build_context_excludes_venv_and_caches():
    ignored = set((CLUSTER / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", ".git", "runs", "**/__pycache__"} <= ignored


if __name__ == "__main__" and sys.argv[1:] == ["--sync"]:
    target = KUBERAY / "rayservice.yaml"
    target.write_text(embedded(target.read_text(), (CLUSTER / "serve.yaml").read_text()))
    print(f"embedded cluster/serve.yaml into {target.relative_to(REPO)}")
