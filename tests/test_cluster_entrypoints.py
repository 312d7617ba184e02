"""Every `python -m ray_jobs.X ...` named in any file of cluster/ (RayJob entrypoints, usage lines
in comments) is a real module whose parser accepts exactly the flags used there and whose
`--help` runs; the Serve config's import path builds the application its deployments configure."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml
from test_cluster_manifests import CLUSTER, REPO, load_yaml, shell_commands

MENTION = re.compile(r"python -m ray_jobs\.\w+[^`#\n]*")


def yaml_entrypoints(node) -> list[str]:
    """Values of every `entrypoint` key in a parsed YAML document."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "entrypoint" and isinstance(v, str)]
        return found + [e for v in node.values() for e in yaml_entrypoints(v)]
    if isinstance(node, list):
        return [e for v in node for e in yaml_entrypoints(v)]
    return []


def comment_mentions(text: str) -> list[str]:
    """`python -m ray_jobs.X ...` written in comments (to the end of the line or a backtick)."""
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    return [m for c in comments for m in MENTION.findall(c)]


def entrypoints() -> dict[str, tuple[str, list[str]]]:
    """id -> (module, argv after the module) for every ray_jobs command named in cluster/."""
    found = {}
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        lines = comment_mentions(text)
        if path.suffix == ".yaml":
            lines += yaml_entrypoints(yaml.safe_load(text))
        commands = [argv for line in lines for argv in shell_commands(line)
                    if argv[:2] == ["python", "-m"] and argv[2].startswith("ray_jobs.")]
        unique = list(dict.fromkeys(map(tuple, commands)))  # a usage line may be repeated
        for n, argv in enumerate(unique):
            found[f"{path.relative_to(CLUSTER)}#{n}:{argv[2]}"] = (argv[2], list(argv[3:]))
    return found


ENTRYPOINTS = entrypoints()
MODULES = sorted({module for module, _ in ENTRYPOINTS.values()})


def test_cluster_files_name_every_pipeline_stage():
    assert set(MODULES) == {"ray_jobs.prep_data", "ray_jobs.prep_latents", "ray_jobs.train_ae",
                            "ray_jobs.train_ar", "ray_jobs.serve"}
    # Both stages of each training recipe appear, as the README's order of commands.
    stages = {" ".join(argv[argv.index("--stage"):][:2]) for _, argv in ENTRYPOINTS.values() if "--stage" in argv}
    assert stages == {"--stage stage1", "--stage stage2", "--stage pretrain", "--stage sft"}


@pytest.mark.parametrize("key", sorted(ENTRYPOINTS), ids=sorted(ENTRYPOINTS))
def test_entrypoint_flags_parse(key, capsys):
    from ray_jobs._entry import build_parser

    module_name, argv = ENTRYPOINTS[key]
    assert importlib.util.find_spec(module_name), f"{module_name} does not exist (named in cluster/{key})"
    module = importlib.import_module(module_name)
    parser = build_parser(module, f"python -m {module_name}")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"cluster/{key}: {capsys.readouterr().err.strip()}")
    # Every value given on the command line arrived in the namespace (nothing swallowed).
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    assert given <= set(vars(args)), given - set(vars(args))


@pytest.mark.parametrize("module_name", MODULES)
def test_entrypoint_help_runs_and_lists_the_flags_used(module_name):
    result = subprocess.run([sys.executable, "-m", module_name, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    used = {a for m, argv in ENTRYPOINTS.values() if m == module_name for a in argv if a.startswith("--")}
    assert used and all(flag in result.stdout for flag in used), used


def test_serve_import_path_builds_the_configured_application():
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    (app,) = ServeDeploySchema.model_validate(load_yaml(CLUSTER / "serve.yaml")).applications
    builder = import_attr(app.import_path)
    built = build_app(call_user_app_builder_with_args_if_necessary(builder, app.args), name=app.name)
    built.validate_single_fastapi_ingress()
    assert built.ingress_deployment_name == "Ingress"
    deployments = {d.name: d for d in built.deployments}
    assert set(deployments) == {d.name for d in app.deployments}
    # The config's options apply to these deployments as Serve would apply them.
    for override in app.deployments:
        options = override.model_dump(exclude_unset=True, exclude={"name"})
        options["ray_actor_options"] = override.ray_actor_options.model_dump(exclude_unset=True)
        configured = deployments[override.name].options(**options)
        assert configured.max_ongoing_requests == override.max_ongoing_requests
        assert configured.ray_actor_options["num_cpus"] == override.ray_actor_options.num_cpus
