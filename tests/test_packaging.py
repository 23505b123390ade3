"""The package as users install it: `pip install .` (a built wheel, not this checkout) in a fresh venv, without extras.

The shipped pipelines come with the wheel, every `epg` subcommand's --help works without the optional extras, and
a command that needs one names the extra to install.
"""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from epg_diffusers import __version__, cli

from .fresh_env import ENV, fresh_venv, pip_install, run

ROOT = Path(__file__).parent.parent


def clean_copy(target: Path) -> Path:
    """The checkout's tracked and untracked, not ignored files (no build/ left over from an earlier build)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv where `pip install .` of a clean copy of this checkout ran (no extras): its bin folder."""
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "user")
    pip_install(python, ".", cwd=clean_copy(tmp_path_factory.mktemp("checkout")))
    return python.parent


def test_version_is_written_once():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and __version__ not in text and "version=" not in (ROOT / "setup.py").read_text()
    written = [p for p in (ROOT / "epg_diffusers").rglob("*.py") if f'"{__version__}"' in p.read_text()]
    assert written == [ROOT / "epg_diffusers" / "version.py"]


def package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports inside functions included."""
    graph = {}
    for path in (ROOT / "epg_diffusers").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("epg_diffusers")):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                target = ".".join(filter(None, [base, node.module]))
                for alias in node.names:  # `from . import sigmas` imports a module (or a subpackage)
                    sub = ROOT / f"{target}.{alias.name}".replace(".", "/")
                    edges.add(f"{target}.{alias.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else target)
        graph[module] = {e for e in edges if e != module}
    return graph


def test_no_import_cycles():
    """hub -> pipelines -> hub and the like: no module reaches itself through the package's imports (any depth)."""
    graph = package_imports()
    assert "epg_diffusers.hub" in graph and "epg_diffusers.model_card" in graph["epg_diffusers.hub"]

    def reaches(start, seen):
        for target in graph.get(start, ()):
            if target == "epg_diffusers":  # the package itself: only `__init__`'s re-exports
                continue
            if target not in seen:
                seen.add(target)
                reaches(target, seen)
        return seen

    cycles = [module for module in graph if module in reaches(module, set())]
    assert not cycles, cycles


def test_the_wheel_is_the_package_not_the_checkout(installed, tmp_path):
    where = run(installed / "python", "-c", "import epg_diffusers, epg_diffusers.defaults as d; "
                "print(epg_diffusers.__version__, epg_diffusers.__file__, d.shipped_dir())", cwd=tmp_path).stdout.split()
    assert where[0] == __version__ and "site-packages" in where[1] and str(ROOT) not in where[1]
    shipped = Path(where[2])
    assert "site-packages" in str(shipped) and (shipped / "epg-digits-diffusion" / "model_index.json").is_file()
    assert (shipped / "epg-digits-consistency" / "transformer" / "transformer_epg.py").is_file()
    assert (shipped / "space" / "app.py").is_file()


def test_epg_grid_from_another_directory(installed, tmp_path):
    result = run(installed / "epg", "grid", "--output", "g.png", cwd=tmp_path)  # the README's quick start, as a wheel
    assert "74 network evaluations per image" in result.stdout
    with PIL.Image.open(tmp_path / "g.png") as image:
        assert image.format == "PNG" and image.size == (612, 684)  # 10 rows x (a label + 8 samples)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_help_works_without_the_extras(installed, tmp_path, command):
    result = run(installed / "epg", command, "--help", cwd=tmp_path)
    assert result.stdout.startswith(f"usage: epg {command}")


def test_a_missing_extra_is_named(installed, tmp_path):
    np.savez(tmp_path / "samples.npz", np.zeros((10, 16, 16, 3), np.uint8), np.arange(10))
    result = subprocess.run([installed / "epg", "evaluate", "--small-data", "digits", "samples.npz"], cwd=tmp_path,
                            env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("epg evaluate: error: this needs ") and "pip install 'epg-diffusers[eval]'" in result.stderr


def test_installed_metadata_declares_what_the_code_imports(installed, tmp_path):
    requires = json.loads(run(installed / "python", "-c", "import importlib.metadata as m, json; "
                              "print(json.dumps(m.requires('epg-diffusers')))", cwd=tmp_path).stdout)
    core = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0] for r in requires if "extra ==" not in r}
    assert {"torch", "diffusers", "tqdm", "packaging", "huggingface-hub", "safetensors"} <= core
    assert "diffusers<0.43,>=0.42" in requires and "torch>=2.6" in requires
    assert sys.version_info >= (3, 11)
