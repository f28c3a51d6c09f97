"""The three formats of one report: JSON is the model, Markdown and HTML show the same cells, user text is escaped."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.cli.main import main
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.reports import collect_report, format_for, render
from agent_sleep.reports.markdown import escape
from agent_sleep.reports.model import Report
from tests.consolidation.conftest import AGENT
from tests.reports.history import ROLLBACK_REASON

PLOTS = ["runs", "skills", "gate", "guards", "timeline", "selection"]


def md_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text, as rows of plain cells (code spans, emphasis and escapes undone)."""
    tables: list[list[list[str]]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ---") or line.startswith("| ---:"):
            continue
        if not line.startswith("| "):
            continue
        if i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            tables.append([])
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        tables[-1].append([html.unescape(re.sub(r"\\(.)", r"\1", c.strip().replace("**", "").replace("`", "")))
                           for c in cells])  # fmt: skip
    return tables


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


@pytest.fixture(scope="module")
def report(history: Any) -> Report:
    return collect_report(history.store)


def test_json_is_the_model_dumped_and_reads_back(report: Report) -> None:
    text = render(report, "json")
    assert Report.model_validate_json(text) == report
    data = json.loads(text)
    agent = data["agents"][0]
    assert {"runs", "gate", "guards", "deployments", "skills", "selection", "outcomes", "live_stack"} <= set(agent)
    assert data["agents"][0]["deployments"][-1]["rollback"] is True and data["empty"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", data["generated_at"]) and text.count("\n") == 1


def test_markdown_and_html_show_the_same_cells(report: Report) -> None:
    md, page = render(report, "md"), render(report, "html")
    mt, ht = md_tables(md), html_tables(page)
    assert len(mt) == len(ht) == 7  # runs, a table per skill (2), gate, guards, deployments, selection
    assert mt == ht
    agent = report.agents[0]
    gate = mt[3]
    assert len(gate) == len(agent.gate) + 1
    assert [row[7] for row in gate[1:]] == [f"{g.delta:+.3f}" for g in agent.gate]
    assert [row[8] for row in gate[1:]] == [f"{g.ci_low:+.3f} .. {g.ci_high:+.3f}" for g in agent.gate]
    deployments = mt[5]
    assert deployments[-1][2] == "rollback" and deployments[-1][6] == ROLLBACK_REASON  # the text, whole


def test_user_text_is_escaped(report: Report) -> None:
    page = render(report, "html")
    assert "<script" not in page and "<b>" not in page  # no markup from the database reaches the page
    assert html.escape(ROLLBACK_REASON) in page
    md = render(report, "md")
    row = next(line for line in md.splitlines() if "rollback" in line and line.startswith("| 4 "))
    assert "&lt;script&gt;" in row and "<script" not in md and r"\| see #12" in row
    assert escape("a|b\n<i>_x_</i> [l](u)") == r"a\|b &lt;i&gt;\_x\_&lt;/i&gt; \[l\](u)"


def test_the_html_is_one_self_contained_page_with_every_plot(report: Report) -> None:
    page = render(report, "html")
    assert re.findall(r'data-plot="(\w+)"', page) == PLOTS
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(PLOTS) and all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert not re.search(r"""(?:href|src)=["']?(?:https?:)?//""", page) and "@import" not in page
    assert "default-src 'none'" in page  # the page's own policy: nothing is fetched at view time
    assert render(report, "html") == page  # the same report gives the same bytes


def test_an_empty_report_says_there_is_nothing_yet(tmp_path: Path) -> None:
    from agent_sleep.config import Settings
    from agent_sleep.store import ExperienceStore

    with ExperienceStore(settings=Settings(data_dir=tmp_path / "d", database_url=f"sqlite:///{tmp_path}/e.db")) as st:
        empty = collect_report(st)
    page = render(empty, "html")
    assert 'id="empty"' in page and "Nothing to report yet" in page and "<img" not in page
    assert "Nothing to report yet" in render(empty, "md") and json.loads(render(empty, "json"))["empty"] is True


def test_a_section_without_data_says_so_instead_of_an_empty_plot(history: Any) -> None:
    # Cycle 2 had nothing to learn (it only dropped the badly scored answer): no gate, guard scores or deployment.
    run = [r for r in RunStore(history.store).runs(agent=AGENT) if r.outcome == "no_signal"][0]
    page = render(collect_report(history.store, run=run.id), "html")
    assert re.findall(r'data-plot="(\w+)"', page) == ["runs", "selection"]
    for words in ("No skill has been through the gate yet.", "No gate decisions yet.", "No guard scores yet.",
                  "No deployments yet: the agent runs on the base model."):  # fmt: skip
        assert words in page


def test_the_format_follows_the_file_name() -> None:
    assert [format_for(p) for p in ("r.html", "R.HTM", "r.md", "r.json", None)] == ["html", "html", "md", "json", "md"]
    with pytest.raises(ValueError, match="name it .html, .md or .json"):
        format_for("report.txt")


def test_the_cli_writes_each_format(history: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--data-dir", str(history.settings.data_dir), "--db", history.settings.database_url]
    assert main(["report", *where, "-o", str(tmp_path / "r.html")]) == 0
    assert "wrote" in capsys.readouterr().err and (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", *where, "--agent", AGENT, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["agent"] == AGENT and len(data["agents"][0]["runs"]) == 5
    assert main(["report", *where, "--json"]) == 0 and json.loads(capsys.readouterr().out)["agents"]
    assert main(["report", *where, "--json", "--format", "md"]) == 2 and "disagree" in capsys.readouterr().err
    assert main(["report", *where]) == 0 and capsys.readouterr().out.startswith("# agent-sleep")
    assert main(["report", *where, "-o", str(tmp_path / "r.txt")]) == 2
    assert "name it .html, .md or .json" in capsys.readouterr().err
    assert main(["report", *where, "--agent", "helpdsk"]) == 1
    assert "did you mean 'helpdesk'" in capsys.readouterr().err
