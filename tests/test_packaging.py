"""A plain, non-editable install (a wheel) carries the configs and presets and runs `reproduce`."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_the_package_list_names_every_subpackage():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "landscape").rglob("__init__.py")}
    assert found | {"landscape.configs"} == listed


@pytest.mark.slow
def test_a_wheel_installs_and_runs_the_smoke_reproduce(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("bn_landscape-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # The new venv sees this environment's packages (torch, ...) through a .pth file, but not the source tree.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    landscape = venv / "bin" / "landscape"
    helped = subprocess.run(
        [str(landscape), "reproduce", "--help"], cwd=work, capture_output=True, text=True, env=env, timeout=120
    )
    assert helped.returncode == 0 and "--preset" in helped.stdout
    where = subprocess.run(
        [str(py), "-c", "import landscape; print(landscape.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert str(ROOT) not in where  # the wheel's copy, not the source tree
    top = subprocess.run([str(py), "-c", "import cli"], cwd=work, capture_output=True, text=True, env=env)
    assert top.returncode != 0  # nothing named `cli` is installed at the top level of site-packages
    module = subprocess.run([str(py), "-m", "landscape", "--help"], cwd=work, capture_output=True, text=True, env=env)
    assert module.returncode == 0 and "reproduce" in module.stdout
    res = subprocess.run(
        [str(landscape), "reproduce", "--preset", "smoke", "--out", str(work / "results")],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "results" / "report.html").exists() and (work / "results" / "smoothness" / "summary.json").exists()
