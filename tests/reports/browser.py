"""TEST CODE: open a local HTML file in headless Chromium over the DevTools protocol and say what it showed.

Why the DevTools protocol and not ``chromium --screenshot``: the page's console errors, the requests it
made and each image's decoded size come back as structured events and values, not as log lines to
parse. The client is ~100 lines over ``websockets`` (sync API); the browser is Debian's ``chromium``
(``scripts/bootstrap.py`` installs it), found on PATH or named by ``$AGENT_SLEEP_CHROMIUM``.

Chromium writes the port it listens on to ``DevToolsActivePort`` in its profile folder; we read that
instead of its stderr. One page target is made and driven in "flattened" session mode.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page once it has loaded: wait for every image to decode, then measure.
MEASURE = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const box = e => { const r = e.getBoundingClientRect();
                     return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; };
  return {
    images: imgs.map(i => ({key: i.dataset.plot || null, complete: i.complete, naturalWidth: i.naturalWidth,
                            naturalHeight: i.naturalHeight, scheme: i.src.split(':')[0], ...box(i)})),
    svgs: [...document.querySelectorAll('svg')].map(box),
    scripts: document.scripts.length,
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    text: document.body.innerText,
  };
})()"""


def find_chromium() -> str | None:
    named = os.environ.get("AGENT_SLEEP_CHROMIUM")
    if named:
        return named
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class PageView:
    """What the browser made of a page."""

    screenshot: bytes  # PNG of the whole page
    errors: list[str]  # console errors, uncaught exceptions, error log entries (CSP violations among them)
    requests: list[str]  # every URL the page asked for besides itself
    images: list[dict[str, Any]]
    svgs: list[dict[str, Any]]
    scripts: int
    width: int
    height: int
    text: str
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)


class _Session:
    """One page session over the browser's websocket: commands in order, events kept as they arrive."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session is not None:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            data = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if data.get("id") == self.next_id:
                if "error" in data:
                    raise RuntimeError(f"{method} failed: {data['error']}")
                return data.get("result", {})  # type: ignore[no-any-return]
            if "method" in data:
                self.events.append(data)

    def wait_for(self, method: str, *, timeout: float = 30.0) -> dict[str, Any]:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            data = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if "method" in data:
                self.events.append(data)
                if data["method"] == method:
                    return data


def _port_file(profile: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
        time.sleep(0.05)
    raise RuntimeError(f"chromium did not open its DevTools port in {timeout:.0f} s")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif ev["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
        elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')}")
    return out


def render_page(page: Path, *, width: int = 1280, timeout: float = 60.0) -> PageView:
    """Load ``page`` (a local file) in headless Chromium, wait for its images, measure and screenshot it."""
    from websockets.sync.client import connect

    chrome = find_chromium()
    if chrome is None:
        raise RuntimeError("no chromium on PATH (scripts/bootstrap.py installs Debian's chromium when run as root)")
    url = page.resolve().as_uri()
    # Chromium's helper processes may still write to the profile while it is removed (seen on a loaded CI machine:
    # "Directory not empty: 'Default'"): they run in their own process group, which is ended as a whole, and a
    # leftover file in the temporary profile does not fail the test.
    with tempfile.TemporaryDirectory(prefix="agent-sleep-chromium-", ignore_cleanup_errors=True) as tmp:
        profile, log = Path(tmp) / "profile", Path(tmp) / "chromium.log"
        cmd = [chrome, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", "--mute-audio",
               "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},900"]  # fmt: skip
        if os.geteuid() == 0:
            cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox on
        with log.open("wb") as err:
            proc = subprocess.Popen([*cmd, "about:blank"], stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)  # fmt: skip
        try:
            port, path = _port_file(profile, proc, log, timeout)
            with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout) as ws:
                s = _Session(ws)
                target = s.call("Target.createTarget", {"url": "about:blank"})["targetId"]
                s.session = s.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    s.call(f"{domain}.enable")
                s.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                              "mobile": False})  # fmt: skip
                s.call("Page.navigate", {"url": url})
                s.wait_for("Page.loadEventFired", timeout=timeout)
                measured = s.call("Runtime.evaluate", {"expression": MEASURE, "awaitPromise": True,
                                                       "returnByValue": True}, timeout=timeout)  # fmt: skip
                if "exceptionDetails" in measured:
                    raise RuntimeError(f"measuring the page failed: {measured['exceptionDetails']}")
                value = measured["result"]["value"]
                shot = s.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": value["width"], "height": value["height"], "scale": 1},
                }, timeout=timeout)  # fmt: skip
                s.session = None
                s.call("Target.closeTarget", {"targetId": target})
                requests = [ev["params"]["request"]["url"] for ev in s.events
                            if ev["method"] == "Network.requestWillBeSent" and ev["params"]["request"]["url"] != url
                            and not ev["params"]["request"]["url"].startswith("data:")]  # fmt: skip
                return PageView(screenshot=base64.b64decode(shot["data"]), errors=_errors(s.events), requests=requests,
                                images=value["images"], svgs=value["svgs"], scripts=value["scripts"],
                                width=value["width"], height=value["height"], text=value["text"],
                                events=s.events)  # fmt: skip
        finally:
            _end_group(proc)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate Chromium and every helper process it started (its own session), killing what outlives 10 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def blank_fraction(png: bytes, box: dict[str, Any]) -> tuple[int, float]:
    """(distinct colours, share of pixels that differ from the most common one) in ``box`` of a screenshot."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        crop = im.convert("RGB").crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                       int(box["y"] + box["height"])))  # fmt: skip
    colours = crop.getcolors(maxcolors=1 << 20) or []
    if not colours:
        return 0, 0.0
    total = sum(n for n, _ in colours)
    return len(colours), 1.0 - max(n for n, _ in colours) / total


def problems(view: PageView, plots: set[str]) -> list[str]:
    """Everything wrong with a rendered report page that should show exactly the plots ``plots``."""
    import io

    from PIL import Image

    out = [f"error: {e}" for e in view.errors]
    out += [f"requested {u}" for u in view.requests]
    if view.scripts:
        out.append(f"{view.scripts} script element(s) in the page")
    with Image.open(io.BytesIO(view.screenshot)) as im:
        if im.size != (view.width, view.height):
            out.append(f"screenshot is {im.size}, the page {view.width}x{view.height}")
        lo_hi = im.convert("L").getextrema()
        if lo_hi[0] == lo_hi[1]:
            out.append("the screenshot is one colour")
    shown = {i["key"] for i in view.images}
    out += [f"plot {k} is missing" for k in sorted(plots - shown)]
    out += [f"unexpected plot {k}" for k in sorted(shown - plots)]
    for img in view.images + [{"key": "inline svg", "complete": True, "naturalWidth": 1, **s} for s in view.svgs]:
        if not img["complete"] or img["naturalWidth"] == 0 or img["width"] < 1 or img["height"] < 1:
            out.append(f"plot {img['key']} has no size (decoded {img['naturalWidth']}, shown "
                       f"{img['width']:.0f}x{img['height']:.0f})")  # fmt: skip
            continue
        colours, ink = blank_fraction(view.screenshot, img)
        if colours < 8 or ink < 0.01:
            out.append(f"plot {img['key']} is blank ({colours} colours, {ink:.1%} ink)")
    return out
