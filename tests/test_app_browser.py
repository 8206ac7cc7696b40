"""The app in a real Chromium through Playwright: classify, look at the Training tab, run a
1-epoch fine-tune to the end. Screenshots of each tab go to /tmp/animalcls-shots/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import launched_app


pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:::gradio.queueing")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path("/tmp/animalcls-shots")
TIMEOUT_MS = 120_000  # the first classification loads both models and traces them


@pytest.fixture(scope="module")
def url(tiny_checkpoints, tmp_path_factory):
    with launched_app(tiny_checkpoints, tmp_path_factory.mktemp("app-browser")) as (address, _):
        yield address


@pytest.fixture(scope="module")
def page(url):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
        browser.close()


def test_classify_tab(page, tiny_checkpoints):
    from animalcls.app_views import held_out_photos

    photo = held_out_photos([tiny_checkpoints["transfer"]])[0]
    page.locator("#examples-test").wait_for()  # the test-split gallery is shown: its dataset is here
    page.locator("#classify-image input[type=file]").set_input_files(photo)  # an upload classifies...
    verdict = page.locator("#verdict")
    verdict.get_by_text(re.compile("agree")).wait_for()
    with page.expect_response(lambda response: "queue/join" in response.url):
        page.locator("#classify-button").click()  # ...and so does the button
    verdict.get_by_text(re.compile("agree")).wait_for()
    labels = {kind: page.locator(f"#label-{kind}").inner_text() for kind in ("scratch", "transfer")}
    for kind, text in labels.items():
        assert sum(name in text for name in ("cat", "spider", "butterfly", "elephant", "chicken")) == 5, text
        assert "%" in text
    assert "Inference (forward pass)" in page.locator("#info-scratch").inner_text()
    assert "transfer-tiny" in page.locator("#info-transfer").inner_text()
    page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)


def test_bad_upload_shows_a_clear_message(page, tmp_path):
    bad = tmp_path / "shopping-list.png"
    bad.write_text("eggs, milk")  # named .png, holds text
    page.locator("#classify-image input[type=file]").set_input_files(str(bad))
    toast = page.get_by_text(re.compile(r"shopping-list\.png is not an image"))
    toast.first.wait_for()
    assert "agree" not in page.locator("#verdict").inner_text()  # the previous answer was cleared
    page.wait_for_timeout(800)  # let the toast slide in; it is position:fixed, so not a full-page shot
    page.screenshot(path=str(SHOTS / "classify-bad-upload.png"))
    page.reload()  # drops the toast; the server-side state is kept


def test_training_tab(page):
    page.get_by_role("tab", name="Training").click()
    for kind in ("scratch", "transfer"):
        for part in ("history", "confusion"):
            page.locator(f"#{part}-{kind} img").first.wait_for(state="visible")
        assert "backbone" in page.locator(f"#facts-{kind}").inner_text()
        assert "weighted avg" in page.locator(f"#report-{kind}").inner_text()
    box = page.locator("#history-transfer img").first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 150
    page.screenshot(path=str(SHOTS / "training.png"), full_page=True)


def test_finetune_tab_runs_one_epoch_to_the_end(page, tiny_checkpoints):
    page.get_by_role("tab", name="Fine-tune").click()
    epochs = page.locator("#ft-epochs input")
    epochs.fill("1")
    page.locator("#ft-start").click()
    status = page.locator("#ft-status")
    status.get_by_text(re.compile("Fine-tuning transfer-tiny")).wait_for()
    page.screenshot(path=str(SHOTS / "finetune-running.png"), full_page=True)
    status.get_by_text(re.compile(r"Done\.")).wait_for()
    assert "Saved as" in status.inner_text()
    page.locator("#ft-new-confusion img").first.wait_for(state="visible")
    assert "weighted avg" in page.locator("#ft-new-report").inner_text()
    assert page.locator("#ft-curves img, #ft-curves svg").count() > 0
    page.screenshot(path=str(SHOTS / "finetune.png"), full_page=True)

    page.locator("#ft-use").click()
    status.get_by_text(re.compile("Now classifying with")).wait_for()
    page.get_by_role("tab", name="Classify").click()
    page.locator("#info-transfer").get_by_text(re.compile("swapped in")).wait_for()
    # Classify again: the fine-tuned model answers on the transfer side.
    from animalcls.app_views import held_out_photos

    page.locator("#classify-image input[type=file]").set_input_files(held_out_photos([tiny_checkpoints["transfer"]])[1])
    page.locator("#verdict").get_by_text(re.compile("agree")).wait_for()
    info = page.locator("#info-transfer").inner_text()
    assert "swapped in" in info and "Inference (forward pass)" in info
    page.screenshot(path=str(SHOTS / "classify-after-use.png"), full_page=True)
