"""`pip install .` works outside a checkout: the wheel carries every config, the console scripts run anywhere."""

import configparser
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from hybatch.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "hybatch-train": "hybatch.cli:train",
    "hybatch-evaluate": "hybatch.cli:evaluate",
    "hybatch-prepare-data": "hybatch.prepare.command:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from a copy of the sources, so the build leaves nothing in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("hybatch-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_config_file(wheel: zipfile.ZipFile) -> None:
    configs = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in Path(CONFIG_DIR).rglob("*.yaml"))
    assert "hydra/launcher/submitit_slurm.yaml" in configs  # nested groups are in the package data too
    missing = [c for c in configs if f"hybatch/conf/{c}" not in wheel.namelist()]
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools.package-data]): {missing}"


def test_the_wheel_declares_the_console_scripts(wheel: zipfile.ZipFile) -> None:
    (name,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(name).decode())
    declared = dict(entry_points["console_scripts"])
    for script, target in SCRIPTS.items():
        assert declared.get(script) == target, declared
    for script, target in declared.items():  # every declared script points at a function that exists
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{script} = {target}"


INVOCATIONS = {
    "hybatch-train": ([shutil.which("hybatch-train") or "hybatch-train"], "train"),
    "hybatch-evaluate": ([shutil.which("hybatch-evaluate") or "hybatch-evaluate"], "evaluate"),
    "hybatch-prepare-data": ([shutil.which("hybatch-prepare-data") or "hybatch-prepare-data"], "prepare_data"),
    "train.py": ([sys.executable, str(REPO / "train.py")], "train"),
    "evaluate.py": ([sys.executable, str(REPO / "evaluate.py")], "evaluate"),
}


@pytest.mark.parametrize("invocation", sorted(INVOCATIONS))
def test_entry_points_compose_their_config_from_any_directory(invocation: str, tmp_path: Path) -> None:
    """The packaged configs are found from any cwd; Hydra's job name (run dirs, log file) is the script's
    (`train`, not `cli` after the module the function is defined in)."""
    command, task = INVOCATIONS[invocation]
    assert Path(command[0]).is_file(), f"{command[0]} is not installed: pip install -e ."

    def show(part: str) -> dict:
        proc = subprocess.run([*command, "--cfg", part], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return yaml.safe_load(proc.stdout)

    assert show("job") is not None
    assert show("hydra")["hydra"]["job"]["name"] == task
