"""report.html and the compare page in headless Chromium (Debian's chromium + chromium-driver).

Needs the binaries: ``apt-get install -y chromium chromium-driver``. Screenshots go to pytest's
tmp dir and, when ``HEMAFLOW_SCREENSHOT_DIR`` is set, also there (CI keeps them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.plugins.test_report import SECTIONS, run_tiny

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HEMAFLOW_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = os.environ.get("HEMAFLOW_CHROMEDRIVER") or shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("headless browser test needs the chromium and chromedriver binaries "
                    "(apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real tiny runs that differ in one key (the second reuses the first's cached steps)."""
    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEMAFLOW_CACHE_DIR", str(root / "cache"))
        a = run_tiny(root, "run_a")
        b = run_tiny(root, "run_b", "steps.eval.with.n_bootstrap=100")
    return root, a, b


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height), 12000)))
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    dest = os.environ.get("HEMAFLOW_SCREENSHOT_DIR")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(dest) / name)
    driver.set_window_size(1280, 1600)
    return shot


def test_report_renders_in_chromium(driver, runs, tmp_path):
    from selenium.webdriver.common.by import By

    _, run_a, _ = runs
    driver.get((run_a / "report.html").resolve().as_uri())
    assert driver.title == "hemaflow report: tiny_report"
    assert _severe(driver) == []
    assert [h.text for h in driver.find_elements(By.TAG_NAME, "h2")] == SECTIONS
    steps = [h.get_attribute("id") for h in driver.find_elements(By.CSS_SELECTOR, "h3[id^=step-]")]
    assert steps == ["step-data", "step-split", "step-seg", "step-seg_eval", "step-truth", "step-cells",
                     "step-features", "step-clf", "step-eval"]
    # every inlined image decoded, every figure laid out with a size
    assert driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert driver.execute_script("return document.images.length") >= 4
    sizes = driver.execute_script(
        "return Array.from(document.querySelectorAll('figure.figure svg')).map(s => s.getBoundingClientRect().width)")
    assert len(sizes) >= 2 and min(sizes) > 100
    _screenshot(driver, tmp_path, "report.png")


def test_compare_page_renders_in_chromium(driver, runs, tmp_path):
    from selenium.webdriver.common.by import By

    from hemaflow.core.compare import load_runs, render_comparison_html

    root, run_a, run_b = runs
    page = tmp_path / "compare.html"
    page.write_text(render_comparison_html(load_runs([run_a, run_b])))
    driver.get(page.resolve().as_uri())
    assert driver.title == "hemaflow compare"
    assert _severe(driver) == []
    assert [h.text for h in driver.find_elements(By.TAG_NAME, "h2")] == ["Runs", "Recipe differences", "Metrics"]
    keys = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#recipe-differences tbody th")]
    assert keys == ["steps.eval.with.n_bootstrap"]
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#recipe-differences tbody td")]
    assert cells == ["200", "100"]
    rows = driver.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
    assert any(r.text.startswith("patient balanced_accuracy") for r in rows)
    _screenshot(driver, tmp_path, "compare.png")


def test_console_errors_are_seen(driver, tmp_path):
    """The console check above can fail: a page with a script error and a missing image is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>x</title></head><body>'
                    '<img src="missing.png"><script>throw new Error("boom")</script></body></html>')
    driver.get(page.resolve().as_uri())
    severe = _severe(driver)
    assert any("boom" in m for m in severe) and any("missing.png" in m for m in severe), severe
