"""The HTML report in a real browser: headless Chromium loads it offline, with no console error, no request
besides the page itself, and every plot decoded, sized and drawn (not blank) in the screenshot.

Skipped when no Chromium is installed (``scripts/bootstrap.py test`` installs Debian's ``chromium`` when it
runs as root, so CI runs it); ``AGENT_SLEEP_TEST_REQUIRE_CHROMIUM=1`` turns the skip into a failure.
``AGENT_SLEEP_REPORT_SCREENSHOT=DIR`` keeps the screenshots there, to look at.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.reports import collect_report, render
from tests.reports.browser import find_chromium, problems, render_page
from tests.reports.history import ROLLBACK_ACTOR, ROLLBACK_REASON

PLOTS = {"runs", "skills", "gate", "guards", "timeline", "selection"}


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if find_chromium() is None:
        if os.environ.get("AGENT_SLEEP_TEST_REQUIRE_CHROMIUM") == "1":
            pytest.fail("AGENT_SLEEP_TEST_REQUIRE_CHROMIUM=1 but no chromium is installed")
        pytest.skip("no chromium on PATH (scripts/bootstrap.py installs it when run as root)")


def _keep(path: Path) -> None:
    folder = os.environ.get("AGENT_SLEEP_REPORT_SCREENSHOT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def test_the_report_renders_in_chromium_with_every_plot_drawn(history: Any, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(collect_report(history.store), "html"), encoding="utf-8")
    view = render_page(page)
    (tmp_path / "report.png").write_bytes(view.screenshot)
    _keep(tmp_path / "report.png")
    assert problems(view, PLOTS) == []
    assert len(view.images) == len(PLOTS) and all(i["scheme"] == "data" for i in view.images)
    assert ROLLBACK_REASON in view.text and ROLLBACK_ACTOR in view.text  # shown as text, not run as markup
    assert "Agent helpdesk" in view.text and "rollback" in view.text


def test_an_empty_history_is_a_page_that_says_so(tmp_path: Path) -> None:
    from agent_sleep.config import Settings
    from agent_sleep.store import ExperienceStore

    with ExperienceStore(settings=Settings(data_dir=tmp_path / "d", database_url=f"sqlite:///{tmp_path}/e.db")) as st:
        page = tmp_path / "empty.html"
        page.write_text(render(collect_report(st), "html"), encoding="utf-8")
    view = render_page(page)
    (tmp_path / "empty.png").write_bytes(view.screenshot)
    _keep(tmp_path / "empty.png")
    assert problems(view, set()) == []
    assert "Nothing to report yet" in view.text and "agent-sleep sleep --agent A" in view.text


BLANK_SVG = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300"><rect width="400" height="300" fill="white"/>'
    b"</svg>").decode()  # a white square: decodes, has a size, shows nothing


def test_the_checks_catch_a_broken_page(tmp_path: Path) -> None:
    """The same checks on a page that is wrong in every way they look for: each problem is named."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body style='background:white'>"
        f'<img class="plot" data-plot="blank" src="{BLANK_SVG}" style="width:400px;height:300px">'
        '<img class="plot" data-plot="broken" src="data:image/png;base64,AAAA">'
        '<script src="http://127.0.0.1:9/missing.js"></script><script>console.error("boom")</script>'
        "</body></html>", encoding="utf-8")  # fmt: skip
    found = problems(render_page(page), {"blank", "broken", "runs"})
    text = "\n".join(found)
    assert "plot blank is blank" in text and "plot broken has no size" in text and "plot runs is missing" in text
    assert "requested http://127.0.0.1:9/missing.js" in text and "error: console: boom" in text
    assert "2 script element(s)" in text
