"""The leaderboard: its table from results records, the Markdown printer, and the Gradio app in headless Chromium."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_push import ORG, push

from sink_models.leaderboard import COLUMNS, leaderboard_record, load_records, markdown, table

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("vit-plain", "vit-gated", "vit-reg", "vit-gated-reg")
BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BROWSER += ["--disable-component-update", "--disable-sync", "--no-first-run"]


def results(name: str) -> dict:
    return json.loads((ROOT / "results" / f"{name}.json").read_text())


def test_the_table_reads_the_records_and_sorts_by_top1():
    records = [leaderboard_record(results(n), f"org/{n}", "abc") for n in NAMES]
    rows = table(records)
    assert [row["top-1"] for row in rows] == sorted((row["top-1"] for row in rows), reverse=True)
    for row in rows:
        result = results(row["model"].removeprefix("org/"))
        assert row["top-1"] == round(100 * result["accuracy"]["top1"], 2)
        assert row["sinks / img"] == round(result["sinks"]["sinks_per_image"], 3)
        assert row["parameters (M)"] == round(result["model"]["parameters"] / 1e6, 3)
        assert row["GFLOPs"] == round(result["cost"]["gflops"], 4)
    text = markdown(rows, link="https://hub.example")
    assert text.splitlines()[0] == "| " + " | ".join(heading for heading, _ in COLUMNS) + " |"
    assert "[org/vit-gated](https://hub.example/org/vit-gated)" in text


def test_a_local_results_folder_is_read_as_records():
    records = load_records(str(ROOT / "results"))  # eval/run.py's results; synthetic.json is left out
    assert sorted(r["config"]["model_name"] for r in records) == sorted(NAMES)


def test_the_printer_reads_the_pushed_dataset(hub, tmp_path):
    assert push(hub, tmp_path, names=NAMES[:2]).returncode == 0
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, str(ROOT / "upload" / "leaderboard.py"), "--org", ORG, "--endpoint", hub.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all(f"[{ORG}/{n}]({hub.url}/{ORG}/{n})" in done.stdout for n in NAMES[:2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page_rows(page) -> list[list[str]]:
    """The table's rows in the order they appear on the page (top to bottom): gradio keeps each row's element and
    cell ids after sorting and moves it, so DOM order is not display order."""
    rows = page.locator("#leaderboard [role=row].virtual-row").all()
    placed = sorted(rows, key=lambda row: row.bounding_box()["y"])
    return [[cell.strip() for cell in row.locator("[role=gridcell]").all_inner_texts()] for row in placed]


def test_the_app_shows_every_pushed_model_and_sorts(hub, tmp_path):
    from playwright.sync_api import sync_playwright

    assert push(hub, tmp_path, names=NAMES).returncode == 0
    sys.path.insert(0, str(ROOT / "upload" / "space"))
    try:
        import app as space
    finally:
        sys.path.pop(0)
    records = load_records(f"{ORG}/sink-zoo-results", endpoint=hub.url)
    port = free_port()
    demo = space.build(records, space.pictures_for(None, hub.url), link=hub.url)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#leaderboard [role=row].virtual-row", timeout=60_000)
            headings = [h for h, _ in COLUMNS]
            shown = {row[0]: row for row in page_rows(page)}
            for name in NAMES:  # the model column links to each repo
                assert page.locator(f'#leaderboard .virtual-row a[href="{hub.url}/{ORG}/{name}"]').count() == 1
            assert sorted(shown) == sorted(f"{ORG}/{n}" for n in NAMES)
            for name in NAMES:
                result = results(name)
                row = shown[f"{ORG}/{name}"]
                assert float(row[headings.index("top-1")]) == round(100 * result["accuracy"]["top1"], 2)
                assert float(row[headings.index("sinks / img")]) == round(result["sinks"]["sinks_per_image"], 3)
            column = headings.index("top-1")
            page.hover(f"#leaderboard [data-testid=header-{column}]")
            page.click(f"#leaderboard [data-testid=header-{column}] button.cell-menu-button", force=True)
            page.locator("button", has_text="Sort ascending").first.click()
            time.sleep(1)
            values = [float(row[column]) for row in page_rows(page)]
            assert values == sorted(values) and values != sorted(values, reverse=True)
            page.wait_for_selector("text=events_by_head.png", timeout=30_000)  # the chosen model's figures
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert (tmp_path / "leaderboard.png").stat().st_size > 50_000


@pytest.fixture(autouse=True)
def _no_gradio_calls_home(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
