"""Installing with plain pip: open3d chosen by environment markers, and a one-line error naming the
extra when an optional module is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT
from recon.errors import MissingDependencyError
from recon.optional import OPTIONAL, require

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

# Where open3d publishes wheels (checked on PyPI with `pip install --dry-run --only-binary=:all:
# --platform ... --python-version ...`, open3d / open3d-cpu 0.19-0.20): platform -> the package pip must get.
WHEELS = {
    ("linux", "x86_64", "3.10"): "open3d-cpu", ("linux", "x86_64", "3.12"): "open3d-cpu",
    ("linux", "x86_64", "3.14"): "open3d-cpu", ("linux", "aarch64", "3.11"): "open3d",
    ("darwin", "arm64", "3.13"): "open3d", ("win32", "AMD64", "3.12"): "open3d",
    ("darwin", "x86_64", "3.12"): "open3d", ("darwin", "x86_64", "3.13"): None, ("linux", "x86_64", "3.15"): None,
}


def _picked(requirements: list[str], platform: str, machine: str, python: str) -> list[str]:
    env = {"sys_platform": platform, "platform_machine": machine, "python_version": python}
    return [r.name for r in map(Requirement, requirements) if r.name.startswith("open3d")
            and (r.marker is None or r.marker.evaluate(env))]


@pytest.mark.parametrize("where", list(WHEELS), ids=["-".join(w) for w in WHEELS])
def test_dependencies_pick_the_open3d_that_has_a_wheel(where: tuple[str, str, str]) -> None:
    expected = WHEELS[where]
    assert _picked(PROJECT["dependencies"], *where) == ([expected] if expected else [])
    assert len(_picked(PROJECT["optional-dependencies"]["metrics"], *where)) == 1  # the extra always names one


def test_torch_stays_a_dependency_and_every_optional_module_has_its_extra() -> None:
    assert any(Requirement(r).name == "torch" for r in PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    for module, need in OPTIONAL.items():
        names = {Requirement(r).name for r in extras[need.extra]}
        assert need.package in names or f"{need.package}-cpu" in names, (module, need.extra)


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d now raises ImportError
    with pytest.raises(MissingDependencyError) as err:
        require("open3d")
    message = str(err.value)
    assert "\n" not in message and "'metrics' extra (pip install '.[metrics]'" in message
    assert message.startswith("open3d is not installed") and "or pip install open3d" in message
    assert require("numpy").__name__ == "numpy"


def test_cli_without_open3d_gives_one_line_and_exit_code_4(tmp_path: Path) -> None:
    mesh = tmp_path / "m.ply"
    import trimesh

    trimesh.creation.icosphere(subdivisions=1).export(mesh)
    code = ("import sys; sys.modules['open3d'] = None; from recon.cli import main; "
            f"sys.exit(main(['eval', {str(mesh)!r}, '--gt', {str(mesh)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recon eval: error: open3d is not installed")
    assert "'.[metrics]'" in lines[0]
