"""The execution page of a ForEach of 10 000, in headless Chromium: how soon it shows, and scrolls.

    python -m bench ui                 # config/bench/w3_10000.yaml on `kestream standalone`
    python -m bench ui --json

Starts ``kestream standalone`` (embedded broker, a temp data dir: ``bench/standalone.py``),
deploys W3's ForEach of 10 000 Log tasks, starts an execution and opens its page at once in
Debian's Chromium through Selenium (``tests/integration/browser.py``), so the page follows it
live. The page is opened as its link does (a hash route of the UI already loaded, past its login
form). Printed, from that moment (the page's own User Timing marks, and what each frame shows):

- ``first_render_ms``: the first task-run rows drawn;
- ``complete_ms``: the first frame with task-run rows drawn, every task run known to the tree
  (10 001 rows) and the execution shown ended;
- ``gantt_first_ms``/``gantt_complete_ms``: the first frame painted with a row of the Gantt
  timeline, and the first with all 10 001 runs known to it (its ``data-runs``);
- ``logs_first_ms``/``logs_complete_ms``: the same for the log view: a line, then the first
  frame after its stream ended with every line from INFO up (the page's
  ``kestream:logs:ended`` mark; ``log_lines``, its ``data-lines``, says how many);
- ``longest_task_ms``: the longest main-thread task meanwhile (a page that redraws everything
  per frame blocks input for that long);
- the same for the page opened again once the execution has ended (``reload_*``);
- ``scroll_paint_ms_p50``/``max`` for each list (``task_runs``, ``gantt``, ``logs``): a scroll
  of the list to a random place, until the next frame is painted with that place's rows (20
  scrolls each).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bench.report import git_commit, percentile
from bench.standalone import running, wait_ready

FLOW = Path(__file__).resolve().parent.parent / "config" / "bench" / "w3_10000.yaml"
RUNS = 10_001  # the ForEach and its 10 000 children
SCROLLS = 20
API = "/api/v1/main"
#: The scrolled lists of the page: the element that scrolls, and the selector of its rows.
LISTS = {
    "task_runs": ("task-runs", "[role=treeitem]"),
    "gantt": ("gantt", ".gantt-row"),
    "logs": ("logs", ".log"),
}

#: Runs in the page until what ``_GO`` watches for was all seen; answers the times it noted, the
#: first task-run rows' mark and the longest main-thread task.
_UNTIL_COMPLETE = """
const done = arguments[arguments.length - 1];
const look = () => {
  const seen = window.__seen;
  if (seen.complete !== undefined && seen.ganttComplete !== undefined
      && seen.logsComplete !== undefined) {
    const first = performance.getEntriesByName("kestream:task-runs:first")[0].startTime;
    done({ ...seen, first: first - window.__t0,
           longest: Math.max(0, ...(window.__longTasks ?? [])) });
  } else requestAnimationFrame(look);
};
look();
"""

#: Goes to a page of the UI (a hash route, as a link does), from a clean slate of marks; the
#: main thread's long tasks are watched from then on, and each frame notes when the task-run
#: tree first knew every run (``runs``) with the execution shown ended, when the Gantt and the
#: log view first showed a row, and when the Gantt first knew every run and the log view had
#: its whole stream.
_GO = """
const [page, runs] = arguments;
performance.clearMarks();
window.__longTasks = [];
window.__observer?.disconnect();
window.__observer = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
});
window.__observer.observe({ type: "longtask" });
const seen = (window.__seen = {});
const t0 = (window.__t0 = performance.now());
const frame = () => {
  if (window.__seen !== seen) return;  // a later visit watches for itself
  const now = performance.now() - t0;
  const tree = document.querySelector("#task-runs [role=tree]");
  const ended = performance.getEntriesByName("kestream:execution:ended").length;
  const drawn = performance.getEntriesByName("kestream:task-runs:first").length;
  if (seen.complete === undefined && ended && drawn && Number(tree?.dataset.runs) === runs)
    seen.complete = now;
  const gantt = document.getElementById("gantt");
  const logs = document.getElementById("logs");
  if (seen.ganttFirst === undefined && gantt?.querySelector(".gantt-row")) seen.ganttFirst = now;
  if (seen.logsFirst === undefined && logs?.querySelector(".log")) seen.logsFirst = now;
  if (seen.ganttComplete === undefined && Number(gantt?.dataset.runs) === runs)
    seen.ganttComplete = now;
  const streamed = performance.getEntriesByName("kestream:logs:ended").length;
  if (seen.logsComplete === undefined && streamed) {
    seen.logsComplete = now;
    seen.logLines = Number(logs?.dataset.lines);
  }
  if ([seen.complete, seen.ganttComplete, seen.logsComplete].includes(undefined))
    requestAnimationFrame(frame);
};
requestAnimationFrame(frame);
location.hash = page;
"""

#: One scroll of a list (the element that scrolls, by id, and its rows' selector) to a fraction
#: of its height; answers the ms until the frame after the one that drew the rows there (the
#: paint), and how many rows are in view there.
_SCROLL = """
const [id, rows, fraction, done] = arguments;
const view = document.getElementById(id);
const twoFrames = (then) => requestAnimationFrame(() => requestAnimationFrame(then));
view.scrollIntoView({ block: "nearest" });  // the list on screen first, untimed
twoFrames(() => {
  const began = performance.now();
  view.scrollTop = fraction * (view.scrollHeight - view.clientHeight);
  twoFrames(() => {
    const box = view.getBoundingClientRect();
    const shown = [...view.querySelectorAll(rows)].filter((row) => {
      const r = row.getBoundingClientRect();
      return r.bottom > box.top && r.top < box.bottom;
    });
    done({ ms: performance.now() - began, rows: shown.length });
  });
});
"""


def _post(base: str, path: str, body: bytes, content_type: str) -> Any:
    request = urllib.request.Request(
        base + API + path, data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _state(base: str, execution_id: str) -> str:
    with urllib.request.urlopen(f"{base}{API}/executions/{execution_id}", timeout=60) as response:
        return str(json.loads(response.read())["state"]["current"])


def _until_indexed(base: str, execution_id: str, timeout_s: float) -> None:
    """Wait for the API's index to know the execution (the page asks it first, and a 404 shows
    "not found"): a user opens a page from a link the index gave."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _state(base, execution_id)
            return
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _open(driver: Any, page: str, runs: int, timeout_s: float) -> dict[str, float]:
    """Open ``page`` (a hash route) from the page shown, as its link does, and time it."""
    driver.set_script_timeout(timeout_s)
    driver.execute_script(_GO, page, runs)
    seen = driver.execute_async_script(_UNTIL_COMPLETE)
    return {
        "first_render_ms": round(seen["first"], 1),
        "complete_ms": round(seen["complete"], 1),
        "gantt_first_ms": round(seen["ganttFirst"], 1),
        "gantt_complete_ms": round(seen["ganttComplete"], 1),
        "logs_first_ms": round(seen["logsFirst"], 1),
        "logs_complete_ms": round(seen["logsComplete"], 1),
        "log_lines": seen["logLines"],
        "longest_task_ms": round(seen["longest"], 1),
    }


def _scrolls(driver: Any) -> dict[str, float]:
    """Scroll each list to random places (the same places for each list), timing the paint."""
    out: dict[str, float] = {}
    for name, (element_id, rows) in LISTS.items():
        rng = random.Random(1)
        scrolls = [
            driver.execute_async_script(_SCROLL, element_id, rows, rng.random())
            for _ in range(SCROLLS)
        ]
        timings = sorted(s["ms"] for s in scrolls)
        out[f"{name}_scroll_paint_ms_p50"] = round(percentile(timings, 50), 1)
        out[f"{name}_scroll_paint_ms_max"] = round(timings[-1], 1)
        out[f"{name}_rows_in_view_min"] = min(s["rows"] for s in scrolls)
    return out


def run(timeout_s: float) -> dict[str, Any]:
    from tests.integration.browser import chromium  # the tests' Chromium: the same flags

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as temp:
        root = Path(temp)
        with running(root / "data", root / "standalone.log") as launched:
            wait_ready(launched, timeout_s)
            base = f"http://127.0.0.1:{launched.port}"
            flow = _post(base, "/flows", FLOW.read_bytes(), "application/x-yaml")
            with chromium(root / "profile") as driver:
                driver.get(f"{base}/ui/")
                # A server without credentials: the login form is sent empty.
                driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
                WebDriverWait(driver, timeout_s).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, "#executions, #total")
                )
                began = time.monotonic()
                execution = _post(
                    base,
                    f"/executions/{flow['namespace']}/{flow['id']}",
                    b"--x--\r\n",
                    "multipart/form-data; boundary=x",
                )
                _until_indexed(base, execution["id"], timeout_s)
                page = f"#/executions/{execution['id']}"
                live = _open(driver, page, RUNS, timeout_s)
                engine_s = time.monotonic() - began
                state = _state(base, execution["id"])
                driver.execute_script("location.hash = '#/executions'")
                reload = _open(driver, page, RUNS, timeout_s)
                scrolls = _scrolls(driver)
    return {
        "workload": "UI",
        "task_runs": RUNS,
        "state": state,
        "execution_s": round(engine_s, 1),
        **live,
        **{f"reload_{k}": v for k, v in reload.items()},
        **scrolls,
        "commit": git_commit(),
    }


def format_table(row: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"UI: execution page of a ForEach of 10 000 ({row['task_runs']:,} task runs, "
            f"{row['state']}, the execution took {row['execution_s']} s)",
            *(
                f"  {name}: task runs first {row[f'{key}first_render_ms']:.0f} ms, complete "
                f"{row[f'{key}complete_ms']:.0f} ms; Gantt first "
                f"{row[f'{key}gantt_first_ms']:.0f} ms, complete "
                f"{row[f'{key}gantt_complete_ms']:.0f} ms; logs first "
                f"{row[f'{key}logs_first_ms']:.0f} ms, complete "
                f"{row[f'{key}logs_complete_ms']:.0f} ms ({row[f'{key}log_lines']:,} lines); "
                f"longest main-thread task {row[f'{key}longest_task_ms']:.0f} ms"
                for name, key in (("live", ""), ("reload", "reload_"))
            ),
            *(
                f"  {name} scroll to paint: p50 {row[f'{name}_scroll_paint_ms_p50']:.0f} ms, "
                f"max {row[f'{name}_scroll_paint_ms_max']:.0f} ms "
                f"({row[f'{name}_rows_in_view_min']} rows in view at least)"
                for name in LISTS
            ),
        ]
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench ui", description=__doc__)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each wait")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    row = run(args.timeout)
    print(format_table(row), file=sys.stderr)
    if args.json:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
