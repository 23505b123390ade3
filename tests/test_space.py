"""The Spaces demo in a real browser: headless Debian Chromium driven by Playwright against `pipelines/space/app.py`,
and against a Space folder built by `epg space` and installed from its own requirements in a fresh venv.

The app runs as a subprocess on a free localhost port, serving tiny pipelines saved to a temporary folder.
Screenshots go to tests/artifacts/ (kept by CI as test artifacts).
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest import mock

import huggingface_hub
import PIL.Image
import pytest
import yaml
from playwright.sync_api import expect, sync_playwright

from epg_diffusers import cli
from epg_diffusers.schedulers import scheduler_for
from epg_diffusers.space import _gradio_version

from .conftest import tiny_pipeline
from .fresh_env import fresh_venv, pip_install, run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
APP = Path(__file__).parents[1] / "pipelines" / "space" / "app.py"
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 30_000  # for every browser action and expectation
expect.set_options(timeout=TIMEOUT_MS)



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(folder: Path, models: dict[str, str], app: Path = APP, python: Path = Path(sys.executable)):
    """Run the demo ``app`` with ``python`` (model variables ``models``; none: its defaults) and yield its URL."""
    port, log = free_port(), folder / "app.log"
    env = {key: value for key, value in os.environ.items() if key not in ("EPG_MODEL_ID", "EPG_CONSISTENCY_MODEL_ID")}
    env.update(models, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        process = subprocess.Popen([str(python), str(app)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=app.parent)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def app_url(browser, tmp_path_factory):
    """The demo on tiny diffusion and consistency pipelines (fast, with ImageNet class names)."""
    folder = tmp_path_factory.mktemp("space")
    tiny_pipeline().save_pretrained(folder / "diffusion")
    tiny_pipeline(consistency=True).save_pretrained(folder / "consistency")
    with serve(folder, {"EPG_MODEL_ID": str(folder / "diffusion"),
                        "EPG_CONSISTENCY_MODEL_ID": str(folder / "consistency")}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_page(browser, url: str, request):
    """A fresh page on the demo; its final state (passed or failed) is kept as tests/artifacts/<test>.png."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator("#generate")).to_be_visible()
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"space-{request.node.name.removeprefix('test_')}.png", full_page=True)
        page.close()


@pytest.fixture
def page(browser, app_url, request):
    with open_page(browser, app_url, request) as page:
        yield page


def pick_class(page, name: str):
    page.get_by_role("combobox", name="Class").click()
    page.get_by_role("option", name=name, exact=True).click()


def set_number(page, elem_id: str, value: str):
    field = page.locator(f"#{elem_id} input")
    field.fill(value)
    field.blur()


def set_slider(page, elem_id: str, value: str):
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(value)
    field.blur()


def generate(page):
    page.locator("#generate").click()


def expected_evaluations(sampler: str, steps: int) -> int:
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config)
    return pipe(class_labels=[1], num_inference_steps=steps).num_network_evaluations


def test_generate_shows_images_and_evaluations(page):
    pick_class(page, "goldfish")
    set_number(page, "steps", "3")
    generate(page)  # the default sampler, DPM-Solver++ 3M
    expect(page.locator("#status")).to_contain_text("DPM-Solver++ 3M (diffusion, fast), 3 step(s) · network "
                                                    f"evaluations per image: {expected_evaluations('dpm++3m', 3)}")
    expect(page.locator("#status")).to_contain_text("time:")
    expect(page.locator("#gallery img").first).to_be_visible()
    expect(page.locator("#gallery img")).to_have_count(4)  # the default number of images
    page.get_by_label("Guided Heun (diffusion)").check()
    expect(page.locator("#steps input")).to_have_value("32")  # the pipeline's saved default
    set_number(page, "steps", "3")
    generate(page)
    expect(page.locator("#status")).to_contain_text(
        f"Guided Heun (diffusion), 3 step(s) · network evaluations per image: {expected_evaluations('heun', 3)}")


def test_consistency_samplers_use_one_and_few_evaluations(page):
    status, steps = page.locator("#status"), page.locator("#steps input")
    pick_class(page, "ostrich")
    page.get_by_label("One-step (consistency)").check()
    expect(steps).to_have_value("1")
    expect(steps).to_be_disabled()
    generate(page)
    expect(status).to_contain_text("One-step (consistency), 1 step(s) · network evaluations per image: 1 ")
    expect(page.locator("#gallery img").first).to_be_visible()

    page.get_by_label("Few-step (consistency)").check()
    expect(steps).to_have_value("2")
    expect(steps).to_be_enabled()
    set_number(page, "steps", "3")
    generate(page)
    expect(status).to_contain_text("Few-step (consistency), 3 step(s) · network evaluations per image: 3 ")


def test_bad_input_shows_a_message_and_the_app_keeps_working(page):
    status = page.locator("#status")
    generate(page)  # no class picked yet
    expect(status).to_contain_text("Pick a class first.")

    pick_class(page, "hen")
    set_number(page, "steps", "1000")
    generate(page)
    expect(status).to_contain_text("Steps must be a whole number from 1 to 64")
    expect(page.locator("#gallery img")).to_have_count(0)

    set_number(page, "steps", "2")
    page.get_by_text("Guidance", exact=True).click()  # open the accordion
    set_number(page, "guidance-low", "2")
    set_number(page, "guidance-high", "1")
    generate(page)
    expect(status).to_contain_text("must be (low, high) with 0 <= low < high, got (2.0, 1.0)")

    set_number(page, "guidance-low", "0.19")
    generate(page)
    expect(status).to_contain_text("network evaluations per image:")
    expect(page.locator("#gallery img").first).to_be_visible()


def test_fixed_seed_is_kept_and_captioned(page):
    pick_class(page, "stingray")
    set_number(page, "steps", "2")
    page.get_by_label("Randomise seed").uncheck()
    set_number(page, "seed", "123")
    generate(page)
    expect(page.locator("#status")).to_contain_text("network evaluations per image:")
    expect(page.locator("#seed input")).to_have_value("123")
    expect(page.locator("#gallery")).to_contain_text("seed 123")


def test_the_shipped_digits_pipelines_are_the_default(browser, tmp_path, request):
    """No model configured: the demo serves pipelines/epg-digits-diffusion and -consistency."""
    with serve(tmp_path, {}) as url, open_page(browser, url, request) as page:
        pick_class(page, "7")
        generate(page)  # the fast default: DPM-Solver++ 3M, 12 points, guidance 3 in (0.19, 1.61]
        expect(page.locator("#status")).to_contain_text("12 step(s) · network evaluations per image: 14")
        page.get_by_label("Guided Heun (diffusion)").check()
        expect(page.locator("#steps input")).to_have_value("32")  # the sampler's defaults are in place
        generate(page)  # the pipeline's own defaults: 32 Heun points
        expect(page.locator("#status")).to_contain_text("network evaluations per image: 74")
        expect(page.locator("#gallery img")).to_have_count(4)
        page.get_by_label("One-step (consistency)").check()
        generate(page)
        expect(page.locator("#status")).to_contain_text("network evaluations per image: 1 ")
        expect(page.locator("#gallery img").first).to_be_visible()


def test_a_space_built_by_epg_space_installs_from_its_requirements_and_runs(browser, tmp_path, request):
    """`epg space OUT`, then a fresh venv with only the Space's gradio (sdk_version) and OUT/requirements.txt."""
    out = tmp_path / "space"
    assert cli.main(["space", str(out)]) == 0
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, f"gradio=={_gradio_version()}")  # what the Space's sdk_version provides
    pip_install(python, "-r", out / "requirements.txt")
    assert "epg-diffusers" not in run(python, "-m", "pip", "list", cwd=tmp_path).stdout.lower()
    requirements = [line for line in (out / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert not [line for line in requirements if "epg" in line or "/" in line]  # registry names only
    with serve(tmp_path, {}, app=out / "app.py", python=python) as url, open_page(browser, url, request) as page:
        pick_class(page, "3")
        generate(page)  # the shipped diffusion pipeline with the fast default sampler
        expect(page.locator("#status")).to_contain_text("network evaluations per image: 14")
        expect(page.locator("#gallery img")).to_have_count(4)
        page.locator("#presets").get_by_text("One-step (consistency)").first.click()  # a preset row
        expect(page.locator("#sampler input[value='One-step (consistency)']")).to_be_checked()
        generate(page)
        expect(page.locator("#status")).to_contain_text("One-step (consistency), 1 step(s) · network evaluations per image: 1 ")
        expect(page.locator("#gallery img").first).to_be_visible()


def test_space_with_hub_models_is_pushed_as_a_gradio_space(tmp_path, monkeypatch):
    api = mock.MagicMock()
    api.create_repo.return_value = mock.Mock(repo_id="org/epg-demo")
    monkeypatch.setattr(huggingface_hub, "HfApi", mock.Mock(return_value=api))
    shipped = Path(__file__).parents[1] / "pipelines" / "epg-digits-consistency"
    out = tmp_path / "space"
    assert cli.main(["space", str(out), "--model", "org/EPG-XL16-imagenet256", "--consistency-model", str(shipped),
                     "--hardware", "zero-a10g", "--push-to-hub", "org/epg-demo", "--private",
                     "--autoguidance-model", "org/EPG-weak"]) == 0
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == _gradio_version() and front["app_file"] == "app.py"
    assert front["models"] == front["preload_from_hub"] == ["org/EPG-XL16-imagenet256", "org/EPG-weak"]
    assert front["suggested_hardware"] == "zero-a10g" and front["python_version"] == "3.11"
    assert json.loads((out / "space.json").read_text()) == {"diffusion": "org/EPG-XL16-imagenet256",
                                                            "consistency": "models/consistency",
                                                            "weak": "org/EPG-weak"}
    assert (out / "models" / "consistency" / "model_index.json").is_file() and not (out / "models" / "diffusion").exists()
    assert not list(out.rglob("__pycache__")) and (out / "epg_diffusers" / "pipelines" / "pipeline_epg.py").is_file()
    api.create_repo.assert_called_once_with("org/epg-demo", repo_type="space", space_sdk="gradio", private=True,
                                            exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_type"] == "space" and upload["repo_id"] == "org/epg-demo" and Path(upload["folder_path"]) == out


def test_a_failed_space_build_leaves_nothing_behind(tmp_path, capsys):
    (tmp_path / "not-a-pipeline").mkdir()
    assert cli.main(["space", str(tmp_path / "out"), "--model", str(tmp_path / "not-a-pipeline")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-pipeline"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("kept")
    assert cli.main(["space", str(tmp_path / "out")]) == 2  # not empty, no --overwrite: untouched
    assert "exists and is not empty" in capsys.readouterr().err and (tmp_path / "out" / "mine.txt").is_file()


def test_autoguidance_and_image_to_image_in_the_demo(browser, tmp_path, request):
    """With a weaker model configured the demo offers autoguidance; any uploaded image is edited (image-to-image)."""
    tiny_pipeline().save_pretrained(tmp_path / "diffusion")
    tiny_pipeline(consistency=True).save_pretrained(tmp_path / "consistency")
    tiny_pipeline(seed=1).save_pretrained(tmp_path / "weak")
    PIL.Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "upload.png")  # any size: the demo resizes it
    models = {"EPG_MODEL_ID": str(tmp_path / "diffusion"), "EPG_CONSISTENCY_MODEL_ID": str(tmp_path / "consistency"),
              "EPG_WEAK_MODEL_ID": str(tmp_path / "weak")}
    with serve(tmp_path, models) as url, open_page(browser, url, request) as page:
        status = page.locator("#status")
        pick_class(page, "hen")
        set_number(page, "steps", "4")
        page.get_by_text("Guidance", exact=True).click()
        set_slider(page, "autoguidance", "1")
        generate(page)  # DPM-Solver++ 3M, 4 points: 4 evaluations of each network
        expect(status).to_contain_text("4 step(s) · autoguidance 1 · network evaluations per image: 8")
        set_slider(page, "autoguidance", "0")
        page.get_by_text("Image-to-image", exact=True).click()
        page.locator("#image input[type=file]").set_input_files(str(tmp_path / "upload.png"))
        set_slider(page, "strength", "0.5")
        generate(page)  # half of the 4 points' intervals: the last 2
        expect(status).to_contain_text("image-to-image, strength 0.5 · network evaluations per image: 2")
        expect(page.locator("#gallery img")).to_have_count(4)
