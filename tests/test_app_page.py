"""The page a learner meets, in a real Chromium (issue 21): plain words, no jargon, no bare "Error"
badge, heatmap captions outside the pictures, and a phone page no wider than the phone.
Screenshots go to pytest's temporary folder (`<basetemp>/shots*/`, printed with -s)."""

from __future__ import annotations

import re

import pytest
from conftest import BROWSER_TIMEOUT_MS, launched_app, make_image

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

DESKTOP = {"viewport": {"width": 1366, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
# Text elements (leaves with text) inside #id whose box overlaps the box of the image there:
# {text: overlapping height in px}. An image's own toolbar icons carry no text.
OVERLAPS_JS = """(id) => {
    const root = document.getElementById(id);
    const img = root.querySelector('img');
    const box = img.getBoundingClientRect();
    const found = {};
    for (const el of root.querySelectorAll('*')) {
        if (el === img || el.contains(img) || !el.innerText || !el.innerText.trim()) continue;
        if ([...el.children].some(child => child.innerText && child.innerText.trim())) continue;
        const b = el.getBoundingClientRect();
        const h = Math.min(b.bottom, box.bottom) - Math.max(b.top, box.top);
        const w = Math.min(b.right, box.right) - Math.max(b.left, box.left);
        if (h > 0 && w > 0) found[el.innerText.trim()] = h;
    }
    return found;
}"""


@pytest.fixture(scope="module")
def url(tiny_checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app-page")
    (tmp / "examples").mkdir()
    make_image(tmp / "examples" / "cat-tabby.jpg", (220, 40, 40), size=64)
    with launched_app(tiny_checkpoints, tmp) as (address, _):
        yield address


def open_page(browser, url: str, device: dict):
    page = browser.new_page(**device)
    page.set_default_timeout(BROWSER_TIMEOUT_MS)
    page.goto(url)
    page.locator("#classify-button").wait_for()
    return page


def visible_text(page) -> str:
    return page.locator("body").inner_text()


def test_the_desktop_page_speaks_plainly_and_keeps_captions_off_the_heatmaps(browser, url, test_photo, shots):
    page = open_page(browser, url, DESKTOP)
    text = visible_text(page).lower()
    assert "from scratch" in text and "transfer learning" in text
    assert "scope score" not in text and "scratch-tiny" not in text  # no jargon, no folder name at first
    page.locator("#classify-button").click()  # no photo yet
    page.get_by_text(re.compile("Upload a photo first")).first.wait_for()
    page.wait_for_timeout(800)  # let any late status badge appear before looking
    assert page.get_by_text("Error", exact=True).filter(visible=True).count() == 0
    page.screenshot(path=str(shots / "page-no-photo.png"), full_page=True)

    page.locator("#heatmap-toggle input").check()
    page.locator("#classify-image input[type=file]").set_input_files(test_photo)
    for kind in ("scratch", "transfer"):
        page.locator(f"#heatmap-{kind} img").first.wait_for(state="visible")
    page.wait_for_timeout(500)
    for kind in ("scratch", "transfer"):
        assert page.evaluate(OVERLAPS_JS, f"heatmap-{kind}") == {}, kind
        assert "where it looked" in page.locator(f"#heatmap-{kind}").inner_text()  # the caption, above
    tops = [page.locator(f"#heatmap-{kind} img").first.bounding_box()["y"] for kind in ("scratch", "transfer")]
    assert abs(tops[0] - tops[1]) < 2  # the two pictures line up
    assert "scope score" not in visible_text(page).lower()
    page.screenshot(path=str(shots / "page-desktop-heatmaps.png"), full_page=True)
    page.close()


def test_the_phone_page_is_no_wider_than_its_screen(browser, url, test_photo, shots):
    page = open_page(browser, url, PHONE)
    assert page.locator("#examples-user").bounding_box()["y"] < 2 * 844  # examples within two screens
    page.locator("#classify-image input[type=file]").set_input_files(test_photo)
    page.locator("#verdict").get_by_text(re.compile("agree")).wait_for()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, width
    image, answers = (page.locator(s).bounding_box() for s in ("#classify-image", "#label-scratch"))
    assert answers["y"] > image["y"] + image["height"]  # the answers under the photo
    page.screenshot(path=str(shots / "page-phone.png"), full_page=True)
    page.close()
