"""The one-way layers are a checked contract (pyproject.toml [tool.importlinter], import-linter):
ray_jobs -> pipelines -> vgt, vgt never imports Ray, backbone adapters know nothing of VGT."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).parent / "lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root)})


@pytest.mark.timeout(150)
def test_the_project_keeps_its_layer_contracts():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.timeout(150)
def test_the_contracts_catch_each_kind_of_violation(tmp_path):
    """The same contracts over a small tree that breaks each one: all three are reported broken."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    files = {
        "vgt/__init__.py": "", "vgt/ae.py": "", "vgt/ar.py": "", "vgt/pipeline.py": "", "vgt/footprint.py": "",
        "vgt/backbones/__init__.py": "",
        "vgt/train.py": "def fit():\n    import ray  # lazy imports count too\n",
        "vgt/backbones/counting.py": "from vgt import ae\n",
        "pipelines/__init__.py": "", "pipelines/demo.py": "from ray_jobs import cli\n",
        "ray_jobs/__init__.py": "", "ray_jobs/cli.py": "import pipelines.demo\n",
        "ray/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    proc = lint(tmp_path)
    assert proc.returncode != 0
    assert f"Contracts: 0 kept, {len(config['contracts'])} broken." in proc.stdout, proc.stdout[-4000:]
    assert "pipelines.demo -> ray_jobs.cli" in proc.stdout
    assert "vgt.train -> ray" in proc.stdout
    assert "vgt.backbones.counting -> vgt.ae" in proc.stdout
