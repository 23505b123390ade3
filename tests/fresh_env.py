"""Fresh virtualenvs for tests of what users get outside this checkout: no epg-diffusers, only what is installed.

Installing torch into every test venv would take a minute and 5 GB each, so the venv sees this interpreter's torch
(and the packages torch itself requires) through a ``.pth`` file pointing at a folder of symlinks. Everything else
is installed into the venv by pip from the package registries, as a user would.
"""

import importlib.metadata as metadata
import os
import re
import subprocess
import venv
from pathlib import Path

from packaging.requirements import Requirement

# one OpenMP thread per process; pip quiet and never asking; no network for the Hub
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
       "PIP_PROGRESS_BAR": "off", "PYTHONNOUSERSITE": "1"}
LINK_SKIP = {"setuptools", "pip", "wheel"}  # the venv has its own


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(name: str) -> list[metadata.Distribution]:
    """``name`` and every distribution it requires (installed ones, markers evaluated, no extras)."""
    found, todo = {}, [name]
    while todo:
        key = _normal(todo.pop())
        if key in found or key in LINK_SKIP:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def fresh_venv(folder: Path) -> Path:
    """A new venv in ``folder`` that imports this interpreter's torch and nothing else of it; its python."""
    venv.create(folder, with_pip=True, clear=True)
    host = folder / "host-torch"
    host.mkdir()
    for dist in requirement_closure("torch"):
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if top != ".." and source.exists() and not (host / top).exists() and not top.endswith(".pth"):
                (host / top).symlink_to(source)
    site = next((folder / "lib").glob("python*/site-packages"))
    (site / "host-torch.pth").write_text(f"{host}\n")
    return folder / "bin" / "python"


def run(python: Path, *args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python *args``; raise with the output's tail when it fails."""
    result = subprocess.run([str(python), *map(str, args)], cwd=cwd, env={**ENV, **(env or {})}, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode:
        raise AssertionError(f"{python} {' '.join(map(str, args))} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return result


def pip_install(python: Path, *args, cwd=None) -> None:
    run(python, "-m", "pip", "install", "-q", *args, cwd=cwd, timeout=900)


def installed(name: str) -> str:
    """``name==<this interpreter's version>``: the version the suite runs with (and so is tested)."""
    return f"{name}=={metadata.version(name)}"
