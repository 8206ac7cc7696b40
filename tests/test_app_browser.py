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
VERDICT = re.compile(r"^(Both models agree|The models disagree)")  # "agree" alone matches both
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
    verdict.get_by_text(VERDICT).wait_for()
    with page.expect_response(lambda response: "queue/join" in response.url):
        page.locator("#classify-button").click()  # ...and so does the button
    verdict.get_by_text(VERDICT).wait_for()
    labels = {kind: page.locator(f"#label-{kind}").inner_text() for kind in ("scratch", "transfer")}
    for kind, text in labels.items():
        assert sum(name in text for name in ("cat", "spider", "butterfly", "elephant", "chicken")) == 5, text
        assert "%" in text
    tops = [page.locator(f"#label-{kind} .output-class").inner_text().strip() for kind in ("scratch", "transfer")]
    expected = f"Both models agree: {tops[0]}." if tops[0] == tops[1] else (
        f"The models disagree: scratch says {tops[0]}, transfer says {tops[1]}.")
    assert verdict.inner_text().startswith(expected), (verdict.inner_text(), labels)
    assert "Inference (forward pass)" in page.locator("#info-scratch").inner_text()
    assert "transfer-tiny" in page.locator("#info-transfer").inner_text()
    page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)


def test_bad_upload_shows_a_clear_message(page, tmp_path):
    bad = tmp_path / "shopping-list.png"
    bad.write_text("eggs, milk")  # named .png, holds text
    page.locator("#classify-image input[type=file]").set_input_files(str(bad))
    verdict = page.locator("#verdict")
    verdict.get_by_text(re.compile(r"^Not a usable image: shopping-list\.png is not an image")).wait_for()
    page.wait_for_timeout(500)  # let any late status badge or toast appear before looking
    # One message; the results and the photo are cleared; no red "Error" badge, no broken image.
    assert page.get_by_text(re.compile(r"shopping-list\.png is not an image")).count() == 1
    assert page.get_by_text("Error", exact=True).count() == 0
    for kind in ("scratch", "transfer"):
        assert "%" not in page.locator(f"#label-{kind}").inner_text()
        assert "Inference" not in page.locator(f"#info-{kind}").inner_text()
    assert page.locator("#classify-image img").count() == 0
    page.screenshot(path=str(SHOTS / "classify-bad-upload.png"), full_page=True)


def wait_for_transfer_header(page, swapped: bool) -> None:
    """Until the transfer header says (or no longer says) "swapped in" and shows a fresh timing."""
    page.wait_for_function(
        "(swapped) => { const t = document.querySelector('#info-transfer').innerText;"
        " return t.includes('swapped in') === swapped && t.includes('Inference (forward pass)'); }",
        arg=swapped)


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
    from animalcls.app_views import held_out_photos

    page.get_by_role("tab", name="Classify").click()  # a photo on the Classify tab, classified
    page.locator("#classify-image input[type=file]").set_input_files(held_out_photos([tiny_checkpoints["transfer"]])[1])
    page.locator("#verdict").get_by_text(VERDICT).wait_for()
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
    # The photo on the Classify tab was classified again by the swapped-in model, unasked.
    wait_for_transfer_header(page, swapped=True)
    page.locator("#verdict").get_by_text(VERDICT).wait_for()
    page.screenshot(path=str(SHOTS / "classify-after-use.png"), full_page=True)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#ft-restore").click()
    status.get_by_text(re.compile("Restored the original models")).wait_for()
    page.get_by_role("tab", name="Classify").click()
    wait_for_transfer_header(page, swapped=False)
    assert "%" in page.locator("#label-transfer").inner_text()
