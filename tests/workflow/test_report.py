"""The report in a real browser: headless Chromium runs its scripts; the landing page shows the
result (the headline table, as results/summary.csv has it), and every run's plots are listed.

Needs Debian's chromium and chromium-driver (.ci/run installs them); under CI=true it never
skips.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from workdir import snakemake

pytestmark = pytest.mark.workflow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As the probe of this kind of machine runs it: no network, no first-run chores.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} missing: .ci/run installs chromium and chromium-driver")
        pytest.skip(f"{missing} missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(pipeline_run: Path) -> Path:
    snakemake(pipeline_run, "--report", "results/report.html")
    return pipeline_run / "results" / "report.html"


def _wait_for(driver: object, xpath: str, timeout: float = 30.0) -> object:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        found = driver.find_elements(By.XPATH, xpath)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing matches {xpath} after {timeout} s")
        time.sleep(0.2)


def _click(driver: object, label: str) -> None:
    _wait_for(driver, f"//*[normalize-space(text())={label!r}]").click()


def _landing_table(driver: object) -> dict[str, dict[str, str]]:
    """The headline table as shown: {row label: {variable: cell text}}."""
    from selenium.webdriver.common.by import By

    cell = _wait_for(driver, "//th[normalize-space(text())='better than persistence']")
    table = cell.find_element(By.XPATH, "./ancestor::table")
    rows = [
        [c.text.strip() for c in tr.find_elements(By.XPATH, "./th|./td")]
        for tr in table.find_elements(By.TAG_NAME, "tr")
    ]
    variables = rows[0][1:]
    return {r[0]: dict(zip(variables, r[1:], strict=True)) for r in rows[1:]}


def expected_headline(summary: pd.DataFrame) -> dict[str, dict[str, str]]:
    """The landing page's figures from summary.csv alone: best model by mean RMSE over seeds."""
    out: dict[str, dict[str, str]] = {}
    for v, d in summary.groupby("variable"):
        means = d.groupby("model")[["rmse_model", "acc_model"]].mean()
        best = means["rmse_model"].idxmin()
        rmse = means.loc[best, "rmse_model"]
        pers, clim = d["rmse_persistence"].mean(), d["rmse_climatology"].mean()
        out[str(v)] = {
            "best model": str(best),
            "RMSE (ACC)": f"{rmse:.3f} ({means.loc[best, 'acc_model']:.3f})",
            "persistence": f"{pers:.3f} ({d['acc_persistence'].mean():.3f})",
            "climatology": f"{clim:.3f}",
            "better than persistence": f"{100 * (1 - rmse / pers):.1f} %",
            "better than climatology": f"{100 * (1 - rmse / clim):.1f} %",
        }
    return out


def test_landing_page_shows_the_headline_table(browser: object, report: Path):
    browser.get(report.as_uri())
    shown = _landing_table(browser)
    summary = pd.read_csv(report.parent / "summary.csv")
    expected = expected_headline(summary)
    assert set(expected) == {"t2m", "z500"}
    for variable, figures in expected.items():
        for row, value in figures.items():
            assert shown[row][variable] == value, (row, variable, shown[row], value)
    # Nothing is cut off: the page centres its content and hides what overflows above.
    top = browser.execute_script(
        "return [...document.querySelectorAll('h1')].find(h => h.textContent.startsWith("
        "'Result')).getBoundingClientRect().top"
    )
    assert top >= 0, f"the landing page's heading is {-top} px above the window"
    # The chart is inline (a data URI), above the workflow's description.
    img = _wait_for(browser, "//img[starts-with(@src, 'data:image/png;base64,')]")
    assert img.get_attribute("naturalWidth") not in (None, "0")
    shot = report.parent / "report-landing.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("HPCPIPE_SCREENSHOT_DIR"):  # keep it, to look at
        shutil.copy(shot, Path(os.environ["HPCPIPE_SCREENSHOT_DIR"]) / shot.name)


def test_every_model_and_seed_has_its_plots_listed(browser: object, report: Path):
    summary = pd.read_csv(report.parent / "summary.csv")
    runs = sorted(
        {(str(m), int(s)) for m, s in zip(summary["model"], summary["seed"], strict=True)}
    )
    assert len(runs) == 2
    for category, files in (
        ("Evaluation", ("metrics.csv", "skill_vs_lead.png", "error_maps.png")),
        ("Training", ("loss_curve.png",)),
    ):
        for model, seed in runs:
            browser.get(report.as_uri())
            _click(browser, category)
            _click(browser, f"{model} seed {seed}")
            for name in files:
                _wait_for(
                    browser, f"//td[normalize-space(text())='results/eval/{model}/{seed}/{name}']"
                )
