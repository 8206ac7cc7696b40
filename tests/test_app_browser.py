"""The app in a real Chromium through Playwright: classify, look at the Training tab, run a
1-epoch fine-tune to the end. Screenshots of each tab go to pytest's temporary folder
(`<basetemp>/shots*/`, printed with -s)."""

from __future__ import annotations

import re

import pytest
from conftest import BROWSER_TIMEOUT_MS, finetune_saving_two_epochs, launched_app

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

VERDICT = re.compile(r"^(Both models agree|The models disagree)")  # "agree" alone matches both


@pytest.fixture(scope="module")
def url(tiny_checkpoints, tmp_path_factory):
    with launched_app(tiny_checkpoints, tmp_path_factory.mktemp("app-browser")) as (address, _):
        yield address


# Gradio's status tracker of an output: a `.wrap` inside the component's block, with class `hide`
# unless an event that outputs to it is pending or running ("processing | 0.1s").
BUSY_JS = "(id) => Array.from(document.querySelectorAll(`#${id} .wrap`)).some(w => !w.classList.contains('hide'))"
WATCH_JS = """(id) => {
    const busy = BUSY_JS;
    window.__busySeen = window.__busySeen || {};
    window.__busySeen[id] = busy(id);
    (window.__busyWatch = window.__busyWatch || {})[id]?.disconnect();
    const watch = new MutationObserver(() => { if (busy(id)) window.__busySeen[id] = true; });
    watch.observe(document.querySelector(`#${id}`), {subtree: true, childList: true, attributes: true});
    window.__busyWatch[id] = watch;
}""".replace("BUSY_JS", BUSY_JS)
DONE_JS = "(id) => window.__busySeen[id] && !(BUSY_JS)(id)".replace("BUSY_JS", BUSY_JS)


def run_and_wait(page, output_id: str, action) -> None:
    """Run `action` (it triggers an event) and wait until the output #output_id has been busy and
    is done: what an earlier event left on the page never satisfies the wait."""
    page.evaluate(WATCH_JS, output_id)
    action()
    page.wait_for_function(DONE_JS, arg=output_id)


@pytest.fixture(scope="module")
def page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(BROWSER_TIMEOUT_MS)
    page.goto(url)
    return page


def test_classify_tab(page, tiny_checkpoints, shots):
    from animalcls.webapp.views import held_out_photos

    photo = held_out_photos([tiny_checkpoints["transfer"]])[0]
    page.locator("#examples-test").wait_for()  # the test-split gallery is shown: its dataset is here
    upload = page.locator("#classify-image input[type=file]")
    run_and_wait(page, "verdict", lambda: upload.set_input_files(photo))  # an upload classifies...
    verdict = page.locator("#verdict")
    verdict.get_by_text(VERDICT).wait_for()
    run_and_wait(page, "verdict", page.locator("#classify-button").click)  # ...and so does the button
    verdict.get_by_text(VERDICT).wait_for()
    labels = {kind: page.locator(f"#label-{kind}").inner_text() for kind in ("scratch", "transfer")}
    for _kind, text in labels.items():
        assert sum(name in text for name in ("cat", "spider", "butterfly", "elephant", "chicken")) == 5, text
        assert "%" in text
    tops = [page.locator(f"#label-{kind} .output-class").inner_text().strip() for kind in ("scratch", "transfer")]
    expected = (
        f"Both models agree: {tops[0]}."
        if tops[0] == tops[1]
        else (f"The models disagree: scratch says {tops[0]}, transfer says {tops[1]}.")
    )
    assert verdict.inner_text().startswith(expected), (verdict.inner_text(), labels)
    assert "Inference (forward pass)" in page.locator("#info-scratch").inner_text()
    assert "transfer-tiny" in page.locator("#info-transfer").inner_html()  # behind the "Technical facts" toggle
    page.screenshot(path=str(shots / "classify.png"), full_page=True)


def test_bad_upload_shows_a_clear_message(page, tmp_path, shots):
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
    page.screenshot(path=str(shots / "classify-bad-upload.png"), full_page=True)


def wait_for_transfer_header(page, swapped: bool) -> None:
    """Until the transfer header says (or no longer says) "swapped in" and shows a fresh timing."""
    page.wait_for_function(
        "(swapped) => { const t = document.querySelector('#info-transfer').innerText;"
        " return t.includes('swapped in') === swapped && t.includes('Inference (forward pass)'); }",
        arg=swapped,
    )


def test_training_tab(page, shots):
    page.get_by_role("tab", name="Training").click()
    for kind in ("scratch", "transfer"):
        for part in ("history", "confusion"):
            page.locator(f"#{part}-{kind} img").first.wait_for(state="visible")
        assert "backbone" in page.locator(f"#facts-{kind}").inner_text()
        assert "weighted avg" in page.locator(f"#report-{kind}").inner_text()
    box = page.locator("#history-transfer img").first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 150
    page.screenshot(path=str(shots / "training.png"), full_page=True)


def test_finetune_tab_runs_one_epoch_to_the_end(page, tiny_checkpoints, shots):
    from animalcls.webapp.views import held_out_photos

    page.get_by_role("tab", name="Classify").click()  # a photo on the Classify tab, classified
    photo = held_out_photos([tiny_checkpoints["transfer"]])[1]
    run_and_wait(page, "verdict", lambda: page.locator("#classify-image input[type=file]").set_input_files(photo))
    page.locator("#verdict").get_by_text(VERDICT).wait_for()
    page.get_by_role("tab", name="Fine-tune").click()
    epochs = page.locator("#ft-epochs input")
    epochs.fill("1")
    page.locator("#ft-start").click()
    status = page.locator("#ft-status")
    status.get_by_text(re.compile("Fine-tuning transfer-tiny")).wait_for()
    page.screenshot(path=str(shots / "finetune-running.png"), full_page=True)
    status.get_by_text(re.compile(r"Done\.")).wait_for()
    assert "Saved as" in status.inner_text()
    page.locator("#ft-new-confusion img").first.wait_for(state="visible")
    assert "weighted avg" in page.locator("#ft-new-report").inner_text()
    assert page.locator("#ft-curves img, #ft-curves svg").count() > 0
    page.screenshot(path=str(shots / "finetune.png"), full_page=True)

    page.locator("#ft-use").click()
    status.get_by_text(re.compile("Now classifying with")).wait_for()
    page.get_by_role("tab", name="Classify").click()
    # The photo on the Classify tab was classified again by the swapped-in model, unasked.
    wait_for_transfer_header(page, swapped=True)
    page.locator("#verdict").get_by_text(VERDICT).wait_for()
    page.screenshot(path=str(shots / "classify-after-use.png"), full_page=True)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#ft-restore").click()
    status.get_by_text(re.compile("Restored the original models")).wait_for()
    page.get_by_role("tab", name="Classify").click()
    wait_for_transfer_header(page, swapped=False)
    assert "%" in page.locator("#label-transfer").inner_text()


def test_finetune_tab_refuses_bad_settings_by_the_fields_and_a_reload_says_what_became_of_the_run(
    browser, tiny_checkpoints, tmp_path, monkeypatch, shots
):
    """Epochs 50 and learning rate 5: one sentence by each field, no "Error" badge or toast, no
    Cancel. Then a run reloaded away after two epochs: the new page says it was cancelled and
    what was saved, and offers the result."""
    import threading

    import animalcls.heads.finetune
    from animalcls.core.errors import DataError

    started = threading.Event()

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", finetune_saving_two_epochs(started))

    def missing_photos(*args, **kwargs):
        raise DataError("12 image(s) of the recorded split are missing")

    with launched_app(tiny_checkpoints, tmp_path) as (url, _):
        context = browser.new_context(viewport={"width": 1366, "height": 900})  # its own localStorage
        page = context.new_page()
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        page.goto(url)
        page.get_by_role("tab", name="Fine-tune").click()
        status, cancel = page.locator("#ft-status"), page.locator("#ft-cancel")
        status.get_by_text("Not running.").wait_for()
        assert not cancel.is_visible()  # nothing runs: no bright red Cancel
        page.locator("#ft-epochs input").fill("50")
        page.locator("#ft-lr input").fill("5")
        page.locator("#ft-start").click()
        page.get_by_text("Epochs must be a whole number from 1 to 20 on this server.").wait_for()
        page.get_by_text("The learning rate must be a number above 0 and at most 1 (e.g. 0.001).").wait_for()
        page.screenshot(path=str(shots / "finetune-bad-settings.png"), full_page=True)
        assert page.get_by_text("Error", exact=True).count() == 0 and page.locator(".toast-body").count() == 0
        assert status.inner_text() == "Not running." and not cancel.is_visible()

        page.locator("#ft-epochs input").fill("3")
        page.locator("#ft-lr input").fill("0.001")
        page.locator("#ft-start").click()
        status.get_by_text(re.compile(r"epoch 2/3")).wait_for()
        assert started.is_set() and cancel.is_visible()
        page.reload()
        page.get_by_role("tab", name="Fine-tune").click()
        status.get_by_text(
            re.compile(r"^Your last fine-tune was cancelled when its page was closed or reloaded")
        ).wait_for()
        assert "its 2 finished epoch(s) were saved as" in status.inner_text()
        assert page.locator("#ft-result textarea, #ft-result input").first.input_value().startswith("transfer-tiny-ft")
        assert page.locator("#ft-use").is_enabled() and not cancel.is_visible()
        page.screenshot(path=str(shots / "finetune-after-reload.png"), full_page=True)

        # A run that fails: why, in the status; no toast (Gradio 6 heads each "Error"), no badge.
        monkeypatch.setattr(animalcls.heads.finetune, "finetune", missing_photos)
        page.locator("#ft-start").click()
        status.get_by_text(re.compile(r"^Not fine-tuned\. The fine-tune failed: 12 image\(s\)")).wait_for()
        page.wait_for_function(  # the failure event ran: Cancel hidden, the bar's badge cleared
            "() => !document.querySelector('#ft-progress').innerText.includes('Error')"
            " && !document.querySelector('#ft-cancel')?.checkVisibility()"
        )
        assert page.get_by_text("Error", exact=True).count() == 0 and page.locator(".toast-body").count() == 0
        page.screenshot(path=str(shots / "finetune-failed.png"), full_page=True)
        context.close()
