"""The shipped pipelines are every entry point's default, and README's quick start is what CI runs."""

import json
import subprocess
from pathlib import Path

import pytest

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline, cli, defaults

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_pipelines_are_found_in_the_checkout():
    assert defaults.shipped_dir() == ROOT / "pipelines"  # an installed wheel has them in epg_diffusers/shipped
    diffusion = EPGPipeline.from_pretrained(defaults.default_pipeline())
    consistency = EPGPipeline.from_pretrained(defaults.default_pipeline(defaults.CONSISTENCY_PIPELINE))
    assert type(diffusion.scheduler) is EPGHeunScheduler and type(consistency.scheduler) is EPGConsistencyScheduler
    assert len(diffusion.config.id2label) == diffusion.transformer.config.num_classes == 10


def test_sample_without_a_pipeline_uses_the_shipped_one(tmp_path):
    assert cli.main(["sample", "--output-dir", str(tmp_path), "--num-samples", "10", "--num-inference-steps", "2"]) == 0
    settings = json.loads((tmp_path / "settings.json").read_text())
    shipped = str(ROOT / "pipelines" / defaults.DIFFUSION_PIPELINE)
    assert settings["model"] == shipped and settings["command"].startswith(f"epg sample {shipped} ")
    assert settings["status"] == "complete" and settings["sampler"] == "EPGHeunScheduler"


@pytest.mark.parametrize("command", [["sample", "--output-dir", "out"], ["grid"]])
def test_a_missing_default_is_a_clear_error(tmp_path, monkeypatch, capsys, command):
    """As in an install without the shipped pipelines: one line on stderr, exit status 2."""
    monkeypatch.setattr(defaults, "shipped_dir", lambda: tmp_path / "pipelines")
    monkeypatch.chdir(tmp_path)
    assert cli.main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"epg {command[0]}: error: no `pipeline` was given and the ")
    assert "'epg-digits-diffusion' is not in" in error and "Pass `pipeline`: a saved" in error
    with pytest.raises(FileNotFoundError):
        cli.main([*command, "--debug"])  # the traceback, on request


def test_readme_quick_start_is_what_ci_runs():
    command = subprocess.run([ROOT / ".ci" / "quickstart", "--print"], check=True, capture_output=True, text=True)
    assert command.stdout.count("\n") == 1 and "pip install . && epg grid --output " in command.stdout
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "\n.ci/quickstart\n" in ci
    for name in (defaults.DIFFUSION_PIPELINE, defaults.CONSISTENCY_PIPELINE):  # each card states its measured quality
        assert f"pipelines/{name}/README.md" in readme
        assert "## Measured quality" in (ROOT / "pipelines" / name / "README.md").read_text()
    install_and_test = ("pip install torch==2.14.1 torchvision==0.29.1", 'pip install -e ".[test]"',
                        "python -m pytest -q tests")
    for line in install_and_test:
        assert f"\n{line}\n" in readme and f"\n{line}\n" in ci  # README's Install and Tests, verbatim in CI
    assert '\npip install -e ".[test]" && python -m pytest -q tests\n' in readme  # the quick start's test line
