"""The gallery in a real browser (headless Chromium, from the file system): cards, filters, screenshot."""

import re

import cv2
import numpy as np
import pytest

from devstack.browser import chromium_binary, dump_dom, file_url, screenshot
from tests.conftest import skip_or_fail
from tests.vehicle_core.results_fixtures import documents
from vehicle_core.reports.gallery import gallery_item, write_gallery
from vehicle_core.reports.visualize import encode_image


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if chromium_binary() is None:
        skip_or_fail("chromium is not installed (apt-get install chromium)")
    source = encode_image(np.full((120, 160, 3), 90, np.uint8), ".jpg")
    items = [gallery_item(doc, None if doc["status"] == "error" else source) for doc in documents("b").values()]
    return write_gallery(items, tmp_path_factory.mktemp("gallery") / "gallery.html", title="test gallery")


def visible_cards(dom: str) -> list[str]:
    """The data-status of every card the page shows (cards hidden by a filter carry ``hidden``)."""
    cards = re.findall(r"<figure ([^>]*)>", dom)
    return [re.search(r'data-status="([^"]*)"', c).group(1) for c in cards if " hidden" not in f" {c}"]


def test_page_opens_from_the_file_system_with_every_card(page):
    dom = dump_dom(file_url(page))
    assert len(visible_cards(dom)) == 5
    assert re.search(r'id="shown">5<', dom)


def test_status_filter_shows_only_errors(page):
    dom = dump_dom(file_url(page, "status=error"))
    assert visible_cards(dom) == ["error", "error"]
    assert re.search(r'id="shown">2<', dom)


def test_label_filter_matches_any_vehicle_of_a_card(page):
    assert visible_cards(dump_dom(file_url(page, "label=sedan"))) == ["ok", "ok"]  # a, and b's second vehicle
    assert visible_cards(dump_dom(file_url(page, "label=bus&status=ok"))) == ["ok"]


def test_screenshot_shows_the_page(page, tmp_path):
    shot = screenshot(file_url(page), tmp_path / "gallery.png", size=(1000, 700))
    image = cv2.imread(str(shot))
    assert image.shape == (700, 1000, 3)
    assert image.std() > 10  # not a blank page
