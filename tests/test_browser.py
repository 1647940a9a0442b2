"""Open every page of the built book in headless Chromium (Debian's, driven by Playwright),
offline: every page loads, every figure image has loaded, no error or traceback output is
shown, the maths is typeset, nothing runs past the content column (a wide table scrolls
inside its own box), and no request leaves the site. A screenshot per page goes to
``_build/screenshots/``. Skipped where Chromium or Playwright is not installed
(``.ci/run`` installs both)."""
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# elements of the page whose right edge lies past the content column, unless a scrolling
# box (overflow-x auto/scroll) inside the column holds them; a box that hides overflow
# (hidden/clip) cuts them off, which counts as running past
OVERFLOW_JS = """() => {
  const column = document.querySelector("article") || document.querySelector("main") || document.body;
  const right = column.getBoundingClientRect().right + 1;
  const bad = [];
  for (const el of column.querySelectorAll("table, img, pre, svg, .cell_output, mjx-container, figure")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= right) continue;
    let a = el.parentElement, held = false;
    while (a && a !== column.parentElement) {
      const s = getComputedStyle(a).overflowX;
      if ((s === "auto" || s === "scroll") && a.getBoundingClientRect().right <= right) { held = true; break; }
      a = a.parentElement;
    }
    if (!held) bad.push(`${el.tagName.toLowerCase()} "${(el.textContent || el.getAttribute("src") || "").trim().slice(0, 40)}" (right edge ${Math.round(r.right)} > ${Math.round(right)})`);
  }
  return bad.slice(0, 5);
}"""


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
        for what in page.evaluate(OVERFLOW_JS):
            problems.append(f"{f}: {what} runs past the content column")
        if outside:
            problems.append(f"{f}: requests outside the site: {sorted(set(outside))[:3]}")
        page.screenshot(path=str(shots / f"{Path(f).name}.png"), full_page=True)
        context.close()
    assert not problems, "\n".join(problems)
