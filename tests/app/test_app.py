"""The Gradio app (`paca_hf.app`, the Space in spaces/pacavit): its functions, and the page itself driven by a real
headless Chromium (Debian's chromium + chromium-driver, which .ci/run installs)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_configs import tiny_config
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from paca_hf import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTImageProcessorPil, app
from paca_hf.visualization import hard_cluster_map


ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
CLASS_NAMES = {0: "apple", 1: "bicycle", 2: "cathedral", 3: "dolphin", 4: "espresso"}
pytestmark = pytest.mark.usefixtures("one_thread")


def save_model(folder: Path, model_class, **overrides) -> Path:
    torch.manual_seed(0)
    model = model_class(tiny_config(**overrides)).eval()
    model.save_pretrained(folder)
    PaCaViTImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("classifier"), PaCaViTForImageClassification, id2label=CLASS_NAMES)


@pytest.fixture(scope="module")
def segmentor_dir(tmp_path_factory):
    return save_model(
        tmp_path_factory.mktemp("segmentor"), PaCaViTForSemanticSegmentation, id2label={0: "sky", 1: "road", 2: "tree"}
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_classifier_analysis_gives_the_models_top5_and_every_stages_clusters(classifier_dir, photo):
    app_model = app.load_app_model(str(classifier_dir))
    assert app_model.task == "image-classification" and app_model.banner == ""
    analysis = app.analyse(app_model, str(photo))
    assert analysis.picture.shape == (64, 64, 3)  # what the model saw: the processor's resize and crop
    pixel_values = app_model.image_processor(PIL.Image.open(photo), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = app_model.model(pixel_values=pixel_values).logits[0].softmax(-1)
    expected = [CLASS_NAMES[int(i)] for i in probabilities.argsort(descending=True)]
    assert [label for label, _ in analysis.classes] == expected  # 5 classes: all of them, most probable first
    assert [round(p, 5) for _, p in analysis.classes] == [
        round(float(p), 5) for p in probabilities.sort(descending=True).values
    ]
    # Stages 1-3 have 4 clusters each (16x16, 8x8, 4x4 patches of a 64 px picture); stage 4 has none.
    assert {key: value.shape for key, value in analysis.assignments.items()} == {
        "stage1": (4, 16, 16),
        "stage2": (4, 8, 8),
        "stage3": (4, 4, 4),
    }
    for soft in analysis.assignments.values():
        np.testing.assert_allclose(soft.reshape(4, -1).sum(-1), 1.0, atol=1e-5)
    assert set(analysis.timings) == {"preprocess", "model"}
    assert [caption.split(";")[0] for _, caption in app.hard_map_pictures(analysis)] == [
        "stage 1: 4 clusters, 16x16 patches",
        "stage 2: 4 clusters, 8x8 patches",
        "stage 3: 4 clusters, 4x4 patches",
    ]


def test_segmentor_analysis_gives_a_label_map_and_a_legend_that_covers_it(segmentor_dir, photo):
    app_model = app.load_app_model(str(segmentor_dir))
    assert app_model.task == "semantic-segmentation"
    analysis = app.analyse(app_model, str(photo))
    assert analysis.segmentation.shape == analysis.picture.shape[:2]
    annotations = app.segmentation_annotations(analysis)
    coverage = sum(mask.astype(int) for mask, _ in annotations)
    assert (coverage == 1).all()  # every pixel in exactly one legend entry
    assert {name for _, name in annotations} <= {"sky", "road", "tree"}
    sizes = [int(mask.sum()) for mask, _ in annotations]
    assert sizes == sorted(sizes, reverse=True)
    assert list(analysis.assignments)[-1] == "head"  # the PaCa head's class clusters come after the stages
    assert app.cluster_name(analysis, "head", 1) == "road"


def test_cluster_views_and_clicks_read_the_hard_map():
    soft = np.zeros((3, 2, 2), np.float32)
    soft[0, 0, 0] = soft[1, 0, 1] = soft[2, 1, 0] = soft[2, 1, 1] = 1.0  # hand-made: clusters 0, 1 / 2, 2
    analysis = app.Analysis(picture=np.zeros((40, 60, 3), np.uint8), assignments={"stage1": soft})
    assert (hard_cluster_map(soft) == [[0, 1], [2, 2]]).all()
    # Drawn at 384 x 256 (DISPLAY_SIZE on the longer side): the clicks are in those pixels.
    assert app.display_picture(analysis).shape == (256, 384, 3)
    assert app.cluster_at(analysis, "stage1", x=10, y=5) == 0
    assert app.cluster_at(analysis, "stage1", x=383, y=0) == 1
    assert app.cluster_at(analysis, "stage1", x=191, y=128) == 2  # lower half: row 1
    hard, soft_picture, caption = app.cluster_views(analysis, "stage1", 2)
    assert hard.shape == soft_picture.shape == (256, 384, 3)
    assert caption.startswith("cluster 2: wins 50% of the patches")
    with pytest.raises(app.AppInputError, match="clusters 0..2"):
        app.cluster_views(analysis, "stage1", 3)
    with pytest.raises(app.AppInputError, match="outside the 384x256 picture"):
        app.cluster_at(analysis, "stage1", x=384, y=0)
    with pytest.raises(app.AppInputError, match="stage2"):
        app.cluster_views(analysis, "stage2", 0)


def test_bad_and_unusual_files_get_a_message_or_the_right_pixels(classifier_dir, tmp_path, monkeypatch):
    app_model = app.load_app_model(str(classifier_dir))
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(app.AppInputError, match="not an image"):
        app.analyse(app_model, str(text))
    with pytest.raises(app.AppInputError, match="Upload a photo"):
        app.analyse(app_model, None)
    # 16-bit grey 32896 is 128 / 255 of full scale: the model sees mid grey, not white.
    sixteen = tmp_path / "sixteen.png"
    PIL.Image.fromarray(np.full((80, 80), 32896, np.uint16)).save(sixteen)
    assert np.abs(app.analyse(app_model, str(sixteen)).picture.astype(int) - 128).max() <= 1
    # CMYK: decoded to the same RGB as PIL's conversion.
    cmyk = tmp_path / "cmyk.jpg"
    PIL.Image.new("CMYK", (80, 80), (0, 200, 200, 0)).save(cmyk, quality=100)
    expected = np.asarray(PIL.Image.open(cmyk).convert("RGB"), dtype=float).mean((0, 1))
    np.testing.assert_allclose(app.analyse(app_model, str(cmyk)).picture.mean((0, 1)), expected, atol=2)
    # A decompression bomb (PIL's limit, made small here instead of writing a gigapixel file).
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(app.AppInputError, match="too large"):
        app.analyse(app_model, str(sixteen))  # 6400 pixels > 2 x 1000


def test_huge_wide_and_odd_inputs(classifier_dir, tmp_path):
    app_model = app.load_app_model(str(classifier_dir))
    # 56 MP in a small file (a bilevel PNG): refused from its header, before gigabytes are decoded.
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (8000, 7000)).save(huge)
    started = time.perf_counter()
    with pytest.raises(
        app.AppInputError, match=r"huge.png is 8000 x 7000 pixels \(56 MP\): the app takes up to 50 MP"
    ):
        app.analyse(app_model, str(huge))
    assert time.perf_counter() - started < 5
    # A message names the file, not the server's temporary folder or Python objects.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a photo")
    with pytest.raises(app.AppInputError) as caught:
        app.analyse(app_model, str(broken))
    assert str(caught.value) == "broken.png is not an image the app can read (or it is damaged)."
    # A very wide picture is drawn at least MIN_DISPLAY_SIDE high, so every patch row stays visible and clickable.
    wide = app.Analysis(picture=np.zeros((25, 2048, 3), np.uint8), assignments={"stage1": np.ones((2, 7, 512)) / 3584})
    assert app.display_picture(wide).shape == (app.MIN_DISPLAY_SIDE, app.DISPLAY_SIZE, 3)
    assert app.cluster_at(wide, "stage1", x=0, y=app.MIN_DISPLAY_SIDE - 1) == 0
    for cluster in (float("nan"), None, "two"):
        with pytest.raises(app.AppInputError, match="whole number"):
            app.cluster_views(wide, "stage1", cluster)


def test_a_paca_model_without_clusters_is_refused_at_start(tmp_path):
    folder = save_model(tmp_path / "no-clusters", PaCaViTForImageClassification, num_clusters=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="no clusters to draw"):
        app.load_app_model(str(folder))


def test_main_says_why_it_cannot_serve(classifier_dir, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert (
            app.main(
                ["--model", str(classifier_dir), "--port", str(port), "--examples-dir", str(tmp_path / "examples")]
            )
            == 1
        )
    assert f"error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert app.main(["--model", str(tmp_path / "missing")]) == 1
    assert "cannot load model" in capsys.readouterr().err


def test_default_model_is_the_demos_when_it_exists_else_random(segmentor_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(app.MODEL_ENVIRONMENT_VARIABLE, raising=False)
    fallback = app.load_app_model()
    assert fallback.task == "image-classification" and "random weights" in fallback.banner
    assert fallback.model.config.num_labels == 1000
    shutil.copytree(segmentor_dir, tmp_path / app.DEMO_MODEL_DIR)
    demo = app.load_app_model()
    assert demo.task == "semantic-segmentation" and "trained by `make demo`" in demo.banner
    monkeypatch.setenv(app.MODEL_ENVIRONMENT_VARIABLE, str(segmentor_dir))
    assert app.load_app_model().name == str(segmentor_dir)


def test_a_model_without_paca_clusters_is_refused(tmp_path):
    config = SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        num_attention_heads=[1],
        patch_sizes=[7],
        strides=[4],
        mlp_ratios=[1],
        decoder_hidden_size=8,
        num_labels=2,
    )
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path)
    PaCaViTImageProcessorPil().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no clusters to draw"):
        app.load_app_model(str(tmp_path))


def test_examples_are_written_once_and_decode(tmp_path):
    paths = app.example_images(tmp_path, count=2)
    assert [Path(path).name for path in paths] == ["scene-0.png", "scene-1.png"]
    stamp = os.stat(paths[0]).st_mtime_ns
    assert app.example_images(tmp_path, count=2) == paths and os.stat(paths[0]).st_mtime_ns == stamp
    assert PIL.Image.open(paths[0]).size == (app.EXAMPLE_SIZE, app.EXAMPLE_SIZE)


# ----------------------------------------------------------------------------------------------------------------
# the page in a real browser


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited with {server.returncode}: {server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer on {url} within {timeout} s")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.access(program, os.X_OK):
            pytest.fail(f"{program} is missing: install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,1800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def running_app(classifier_dir, tmp_path):
    port = free_port()
    environment = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paca_hf.app",
            "--model",
            str(classifier_dir),
            "--port",
            str(port),
            "--examples-dir",
            str(tmp_path / "examples"),
        ],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_page_shows_classes_and_clusters_of_an_uploaded_photo(
    running_app, browser, classifier_dir, photo, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import WebDriverWait

    expected = app.analyse(app.load_app_model(str(classifier_dir)), str(photo))
    wait = WebDriverWait(browser, 120)
    browser.get(running_app)
    upload = wait.until(when.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))

    # Files that are not images: a message on the page, no traceback. The browser refuses a .txt by its type; a
    # file named .png that is not one reaches the app, whose decoder names the problem.
    for name, message in (("notes.txt", "Invalid file type"), ("broken.png", "not an image")):
        (tmp_path / name).write_text("not a photo")
        upload.send_keys(str(tmp_path / name))
        toast = wait.until(when.visibility_of_element_located((By.XPATH, f"//*[contains(text(), '{message}')]")))
        assert toast.is_displayed() and "Traceback" not in browser.page_source
        browser.get(running_app)  # a fresh page
        upload = wait.until(when.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))

    # A picked example is analysed at once (on a fresh page, so nothing was shown before).
    example = app.analyse(app.load_app_model(str(classifier_dir)), str(tmp_path / "examples" / "scene-0.png"))
    wait.until(when.element_to_be_clickable((By.XPATH, "//button[.//img[contains(@src, 'scene-0.png')]]"))).click()
    wait.until(when.text_to_be_present_in_element((By.ID, "classes"), example.classes[0][0]))
    browser.get(running_app)
    upload = wait.until(when.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))

    upload.send_keys(str(photo))
    top_label = expected.classes[0][0]
    wait.until(when.text_to_be_present_in_element((By.ID, "classes"), top_label))
    classes_text = browser.find_element(By.ID, "classes").text
    assert all(label in classes_text for label, _ in expected.classes)  # the five labels, all shown
    hard_maps = wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#hard-maps img") or False)
    assert len(hard_maps) == len(expected.assignments)  # one hard map per stage with clusters
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#soft-map img") or False)
    wait.until(when.text_to_be_present_in_element((By.ID, "timings"), "model"))
    # A click on a patch of the hard map picks its cluster (one that is not the first, shown before the click): the
    # caption follows. Selenium's offsets are CSS pixels from the element's centre; the map may be drawn scaled.
    hard = hard_cluster_map(expected.assignments["stage1"])
    rows, columns = np.nonzero(hard != 0)
    row, column = int(rows[len(rows) // 2]), int(columns[len(rows) // 2])
    hard_map = browser.find_element(By.CSS_SELECTOR, "#hard-map img")
    scale = hard_map.size["width"] / app.DISPLAY_SIZE
    x = (column + 0.5) * app.DISPLAY_SIZE / hard.shape[1]
    y = (row + 0.5) * app.DISPLAY_SIZE / hard.shape[0]
    ActionChains(browser).move_to_element_with_offset(
        hard_map, round((x - app.DISPLAY_SIZE / 2) * scale), round((y - app.DISPLAY_SIZE / 2) * scale)
    ).click().perform()
    wait.until(when.text_to_be_present_in_element((By.ID, "caption"), f"cluster {hard[row, column]}:"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "app.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    assert not Path(app.__file__).with_suffix(".pyi").exists()  # the app writes nothing into the package


def test_the_space_folder_runs_the_app_on_every_interface():
    space = ROOT / "spaces" / "pacavit"
    front_matter = (space / "README.md").read_text().split("---")[1]
    fields = dict(line.split(": ", 1) for line in front_matter.strip().splitlines())
    assert fields["sdk"] == "gradio" and (space / fields["app_file"]).is_file()
    import gradio

    assert fields["sdk_version"] == gradio.__version__  # the version the tests ran
    assert "paca-hf[app]" in (space / "requirements.txt").read_text()
    result = subprocess.run(
        [sys.executable, str(space / "app.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0 and "--model" in result.stdout
    parsed = app.parse_args(["--host", "0.0.0.0"])
    assert parsed.host == "0.0.0.0" and parsed.port == 7860
