"""/docs and /demo in headless Chromium, with every request off 127.0.0.1 refused (no network)."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.e5, pytest.mark.browser]


def test_docs_page_lists_the_endpoints_without_a_cdn(server, page):
    url, _ = server
    page.goto(f"{url}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/v1/ner", "/v1/qa", "/v1/adapters"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert page.locator(".authorize").count() == 1  # the X-API-Key scheme: "Try it out" can send the key
    assert page.blocked == []


def test_demo_ner_highlights_entities_and_shows_the_route(server, page):
    url, key = server
    page.goto(f"{url}/demo")
    page.fill("#text", "Angela Merkel visited Nairobi last week.")
    page.click("#run")
    page.wait_for_selector("#key-box:not([hidden])")  # 401 without the key: the page asks for it
    assert "HTTP 401" in page.inner_text("#out")
    page.fill("#key", key)
    page.click("#run")
    page.wait_for_selector("mark.ent", timeout=20_000)
    marks = {(m.get_attribute("data-label"), m.inner_text().split("\n")[0].strip()) for m in page.locator("mark.ent").all()}
    labels = {lab for lab, _ in marks}
    assert {"PER", "LOC"} <= labels, marks
    assert any("Merkel" in t for _, t in marks) and any("Nairobi" in t for _, t in marks), marks
    route = page.inner_text("[data-testid=route]")
    assert "stack" in route and "ner" in route, route
    # the language list came from /v1/adapters once the key was given
    assert page.locator("#language option").count() > 1
    # a stack chosen by the person: run as asked, and said so
    page.select_option("#route", "task_only")
    page.click("#run")
    page.locator("[data-testid=route]", has_text="requested").wait_for(timeout=20_000)
    assert "requested" in page.inner_text("[data-testid=route]")
    assert page.blocked == []
    if os.environ.get("MADX_DEMO_SCREENSHOT"):  # scripts/demo_screenshot.sh: docs/demo.png
        page.screenshot(path=os.environ["MADX_DEMO_SCREENSHOT"], full_page=True)


def test_demo_qa_highlights_the_answer(server, page):
    url, key = server
    page.goto(f"{url}/demo")
    page.fill("#key", key)
    page.click("#tab-qa")
    page.fill("#question", "What is the capital of Kenya?")
    page.fill("#context", "Nairobi is the capital and largest city of Kenya. It was founded in 1899 as a rail depot.")
    page.click("#run")
    page.wait_for_selector("mark.answer", timeout=20_000)
    assert "Nairobi" in page.inner_text("mark.answer")
    assert page.inner_text("[data-testid=answer]") == page.inner_text("mark.answer")
    assert "qa" in page.inner_text("[data-testid=route]")


def test_demo_never_renders_client_text_as_html(server, page):
    url, key = server
    page.goto(f"{url}/demo")
    page.fill("#key", key)
    page.fill("#text", "<img src=x onerror=\"document.title='pwned'\"> Angela Merkel in Nairobi")
    page.click("#run")
    page.wait_for_selector("[data-testid=route]", timeout=20_000)
    assert page.title() != "pwned" and page.locator("#out img").count() == 0
