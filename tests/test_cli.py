"""The `epg` command: README's table of bad inputs is what each command prints, one line and exit status 2."""

import re
import shlex
from pathlib import Path

import pytest

from epg_diffusers import cli

from .conftest import cli_error

README = Path(__file__).parent.parent / "README.md"


def readme_rows() -> list[tuple[str, str]]:
    """(command, message) of every row of README's table of bad inputs."""
    section = README.read_text().split("### The `epg` command", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `epg \w+` \| `(epg [^`]+)` \| (.+) \|$", section, flags=re.MULTILINE)
    assert len(rows) >= len(cli.COMMANDS)
    return rows


@pytest.mark.parametrize("command, message", readme_rows())
def test_readme_table_is_what_each_command_prints(tmp_path, monkeypatch, capsys, command, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "empty-folder").mkdir()
    assert cli_error(capsys, shlex.split(command)[1:]) == message + "\n"


def test_every_command_has_a_row():
    assert {command.split()[1] for command, _ in readme_rows()} == set(cli.COMMANDS)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["--debug", "convert", "missing", "out"], ["convert", "missing", "out", "--debug"]):
        with pytest.raises(ValueError, match="`source`='missing' is neither a checkpoint file"):
            cli.main(argv)


def test_a_missing_extra_names_the_extra(monkeypatch, capsys):
    def run(args):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")

    monkeypatch.setattr("epg_diffusers.evaluation.evaluate.run", run)
    error = cli_error(capsys, ["evaluate", "a.npz", "b.npz"])
    assert error == "epg evaluate: error: this needs scipy, which is not installed: pip install 'epg-diffusers[eval]'\n"


def test_a_bug_is_not_hidden(monkeypatch):
    """Only user errors become one line: anything else keeps its traceback."""
    def run(args):
        raise KeyError("a bug")

    monkeypatch.setattr("epg_diffusers.grid.run", run)
    with pytest.raises(KeyError):
        cli.main(["grid"])


def test_preprocess_accepts_the_old_underscore_flags():
    from epg_diffusers.training import data

    parser = cli.OneLineParser(prog="epg preprocess")
    data.add_arguments(parser)
    old = parser.parse_args(["--dataset_name", "d", "--resolution", "16", "--output_dir", "o", "--num_proc", "2",
                             "--image_column", "img", "--label_column", "y"])
    new = parser.parse_args(["--dataset-name", "d", "--resolution", "16", "--output-dir", "o", "--num-proc", "2",
                             "--image-column", "img", "--label-column", "y"])
    assert old == new and new.dataset_name == "d" and new.num_proc == 2


def test_every_flag_is_spelled_with_dashes():
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        parser = cli.OneLineParser(prog=f"epg {name}")
        importlib.import_module(module).add_arguments(parser)
        for action in parser._actions:
            long = [flag for flag in action.option_strings if flag.startswith("--")]
            assert not long or "_" not in long[0], f"epg {name}: {long[0]}"  # the first (shown) spelling
