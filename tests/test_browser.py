"""Open every page of the built book in headless Chromium (Debian's, driven by Playwright),
offline: every page loads, every figure image has loaded, no error or traceback output is
shown, the maths is typeset, and no request leaves the site. A screenshot per page goes to
``_build/screenshots/``. Skipped where Chromium or Playwright is not installed
(``.ci/run`` installs both)."""
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_every_page_renders_offline(built_book, browser, toc_files):
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    for f in toc_files:
        page_file = built_book / f"{f}.html"
        assert page_file.exists(), f
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        outside = []

        def route(r, outside=outside):
            if r.request.url.startswith(("file://", "data:", "blob:")):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        has_math = page.locator(".math").count() > 0
        if has_math:
            try:
                page.wait_for_selector("mjx-container", timeout=20000)
            except Exception:
                problems.append(f"{f}: maths not typeset")
        imgs = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
        for src, complete, width in imgs:
            if not complete or width == 0:
                problems.append(f"{f}: image {src} did not load")
        text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
        for marker in ("Traceback (most recent call last)", "PapermillExecutionError"):
            if marker in text:
                problems.append(f"{f}: shows '{marker}'")
        if page.locator(".output.traceback, .system-message, .problematic").count():
            problems.append(f"{f}: shows an error output or a Sphinx/docutils problem")
        if outside:
            problems.append(f"{f}: requests outside the site: {sorted(set(outside))[:3]}")
        page.screenshot(path=str(shots / f"{Path(f).name}.png"), full_page=True)
        context.close()
    assert not problems, "\n".join(problems)
