"""The leaderboard: its tables (image models, task models, seeds grouped) from results records, the Markdown printer,
and the Gradio app in headless Chromium."""

import copy
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_push import ORG, push

from sink_models.hub.leaderboard import (
    COLUMNS,
    by_recipe,
    by_task_model,
    group_seeds,
    leaderboard_record,
    load_records,
    load_task_rows,
    markdown,
    recipe_digest,
    table,
    task_table,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("vit-plain", "vit-gated", "vit-reg", "vit-gated-reg")
HEADINGS = [heading for heading, _ in COLUMNS]
TASK_HEADINGS = ["model", "task", "variant", "seed", "task loss", "sink attention", "sink layer"]
TASK_HEADINGS += ["loss ratio, sink zeroed", "NOP events / seq", "broadcast events / seq"]
BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BROWSER += ["--disable-component-update", "--disable-sync", "--no-first-run"]
STABILITY = {"loss_spikes": 2, "largest_grad_norm": 3.0, "largest_activation": 123.456}
STABILITY |= {"token_norm_max_over_median": 45.678}


def results(name: str) -> dict:
    return json.loads((ROOT / "results" / f"{name}.json").read_text())


def reseeded(name: str, seed: int, top1: float) -> dict:
    """results/NAME.json as if trained again with another seed (and so another output folder)."""
    result = results(name)
    result["name"] = f"{name}-seed{seed}"
    result["training"]["train"] |= {"seed": seed, "output_dir": f"runs/zoo/{name}-seed{seed}"}
    result["accuracy"]["top1"] = top1
    return result


def layer(name: str, task: str, seed: int, number: int, loss: float, zeroed: float, **figures) -> dict:
    """One synthetic.json row, with the figures the task table does not read."""
    return {
        "name": name,
        "variant": "plain",
        "task": task,
        "seed": seed,
        "layer": number,
        "loss": loss,
        "loss_sink_zeroed": zeroed,
        "null_attention_nop": None,
        "null_attention_active": None,
        "attention_jstar": None,
        "attention_registers": None,
        "loss_registers_zeroed": None,
        "sink_cls": 1.0,
        "ratio_out": 1.2,
        "gate_nop": None,
        "an_other_arms_key": "ignored",
        **figures,
    }


# broadcast-plain: j* gets most attention in layer 1 (not the last layer); its seed-1 twin in layer 2.
TASK_ROWS = [
    layer("nop-plain", "nop", 0, 1, 0.03, 0.03, null_attention_nop=0.99, events_nop=0.0, events_broadcast=0.0),
    layer("broadcast-plain", "broadcast", 0, 1, 0.05, 0.5, attention_jstar=0.9, events_nop=0.0, events_broadcast=0.25),
    layer("broadcast-plain", "broadcast", 0, 2, 0.05, 4.0, attention_jstar=0.6, events_nop=0.5, events_broadcast=0.75),
    layer("broadcast-plain-seed1", "broadcast", 1, 1, 0.04, 0.05, attention_jstar=0.2, events_nop=0.0),
    layer("broadcast-plain-seed1", "broadcast", 1, 2, 0.04, 1.2, attention_jstar=0.8, events_nop=0.0),
]
for row in TASK_ROWS[3:]:
    row["events_broadcast"] = 0.0 if row["layer"] == 1 else 1.0


def results_folder(folder: Path) -> Path:
    """Image results (vit-plain with a stability block and a seed-1 twin, vit-gated, vit-reg) and synthetic.json."""
    folder.mkdir()
    plain = reseeded("vit-plain", 0, 0.9805) | {"name": "vit-plain", "stability": STABILITY}
    for result in (plain, reseeded("vit-plain", 1, 0.9705), results("vit-gated"), results("vit-reg")):
        (folder / f"{result['name']}.json").write_text(json.dumps(result))
    (folder / "synthetic.json").write_text(json.dumps({"retrain_steps": 0, "rows": TASK_ROWS}))
    return folder


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
        assert row["seed"] == result["training"]["train"]["seed"]
    text = markdown(rows, link="https://hub.example")
    assert text.splitlines()[0] == "| " + " | ".join(HEADINGS) + " |"
    assert "[org/vit-gated](https://hub.example/org/vit-gated)" in text


def test_the_stability_block_seed_and_recipe_reach_the_record_and_the_row():
    plain = leaderboard_record(results("vit-plain") | {"stability": STABILITY}, "org/vit-plain", None)
    twin = leaderboard_record(reseeded("vit-plain", 1, 0.9705), "org/vit-plain-seed1", None)
    gated = leaderboard_record(results("vit-gated"), "org/vit-gated", None)
    assert plain["stability"] == STABILITY and plain["model"]["seed"] == 0 and twin["model"]["seed"] == 1
    assert plain["recipe"] == twin["recipe"] != gated["recipe"]  # seed and output folder differ; the variant too
    row = table([plain])[0]
    assert (row["largest activation"], row["token-norm max / median"], row["loss spikes"]) == (123.0, 45.7, 2)
    assert (row["seed"], row["recipe"]) == (0, plain["recipe"])
    before = {key: value for key, value in results("vit-plain").items() if key != "stability"}
    assert table([leaderboard_record(before, "org/old", None)])[0]["largest activation"] is None  # older results


RECIPE = {
    "model": {"variant": "plain", "size": "toy", "model_overrides": '{"image_size": 64, "patch_size": 8}'},
    "data": {"dataset": "canvas-digits", "dataset_options": '{"size": 64}'},
    "train": {"seed": 0, "learning_rate": 0.002, "max_steps": 2000, "output_dir": "runs/a", "logging_steps": 100,
              "save_steps": 1000, "common_mode_penalty": 0.0},
}  # fmt: skip


def recipe(**changes: dict) -> dict:
    changed = copy.deepcopy(RECIPE)
    for group, values in changes.items():
        changed[group] |= values
    return changed


def test_recipe_digests_ignore_the_seed_and_bookkeeping_and_nothing_else():
    digest = recipe_digest(RECIPE)
    # The digests are stored in the results dataset: their definition is pinned here.
    kept = {
        "model": {"variant": "plain", "size": "toy", "model_overrides": {"image_size": 64, "patch_size": 8}},
        "data": {"dataset": "canvas-digits", "dataset_options": {"size": 64}},
        "train": {"learning_rate": 0.002, "max_steps": 2000, "common_mode_penalty": 0.0},
    }
    assert digest == hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]
    bookkeeping = {"seed": 3, "output_dir": "runs/b", "logging_steps": 7, "save_steps": 0, "save_total_limit": 5}
    bookkeeping |= {"resume_from_checkpoint": "auto", "report_to": "tensorboard"}
    assert recipe_digest(recipe(train=bookkeeping)) == digest
    assert recipe_digest(recipe(model={"model_overrides": '{"patch_size":8,"image_size":64}'})) == digest
    others = [
        recipe(train={"learning_rate": 0.001}),
        recipe(train={"max_steps": 1000}),
        recipe(train={"common_mode_penalty": 0.1}),
        recipe(model={"variant": "gated"}),
        recipe(model={"model_overrides": '{"image_size": 64, "patch_size": 4}'}),
        recipe(data={"dataset_options": '{"size": 32}'}),
    ]
    digests = {recipe_digest(other) for other in others}
    assert len(digests) == len(others) and digest not in digests
    assert recipe_digest(None) is None


def test_old_results_and_old_records_still_load(tmp_path):
    stock = results("vit-reg") | {"name": "facebook/dinov2-small", "training": None}
    del stock["cost"]
    partial = results("vit-gated")  # recorded before the trainer wrote its seed
    del partial["training"]["train"]["seed"]
    for old in (stock, partial):  # and before eval/run.py wrote the stability block
        del old["stability"]
    pushed = leaderboard_record(results("vit-plain"), "org/vit-plain", "abc")
    for key in ("stability", "recipe"):  # a record pushed before these keys existed
        del pushed[key]
    del pushed["model"]["seed"]
    for name, content in (("stock", stock), ("partial", partial), ("pushed", pushed)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    rows = {row["model"]: row for row in table(load_records(str(tmp_path)))}
    assert sorted(rows) == ["facebook/dinov2-small", "org/vit-plain", "vit-gated"]
    for row in rows.values():
        assert row["largest activation"] is row["token-norm max / median"] is row["loss spikes"] is None
    assert rows["facebook/dinov2-small"]["recipe"] is rows["facebook/dinov2-small"]["seed"] is None
    assert rows["facebook/dinov2-small"]["GFLOPs"] is None and rows["facebook/dinov2-small"]["variant"] is None
    assert rows["org/vit-plain"]["recipe"] is rows["org/vit-plain"]["seed"] is None
    assert rows["vit-gated"]["seed"] is None and len(rows["vit-gated"]["recipe"]) == 10
    assert rows["org/vit-plain"]["top-1"] == round(100 * results("vit-plain")["accuracy"]["top1"], 2)
    assert load_task_rows(str(tmp_path)) == []


def test_a_local_results_folder_is_read_as_records_and_task_rows():
    records = load_records(str(ROOT / "results"))  # eval/run.py's results; the suites' summaries are left out
    summaries = ("synthetic.json", "interventions.json")
    models = [path.stem for path in (ROOT / "results").glob("*.json") if path.name not in summaries]
    assert sorted(r["config"]["model_name"] for r in records) == sorted(models) and len(models) >= len(NAMES)
    synthetic = json.loads((ROOT / "results" / "synthetic.json").read_text())
    assert load_task_rows(str(ROOT / "results")) == synthetic["rows"]


def test_seed_groups_show_mean_and_sample_standard_deviation():
    def row(model, seed, top1, spikes, activation, recipe, date="2026-12-01"):
        return {"model": model, "variant": "plain", "seed": seed, "top-1": top1, "loss spikes": spikes,
                "largest activation": activation, "recipe": recipe, "date": date}  # fmt: skip

    rows = [
        row("org/vit-plain", 0, 98.0, 1, None, "aaaa"),
        row("org/vit-gated", 0, 99.0, 0, 5.0, "bbbb"),
        row("org/vit-plain-seed1", 1, 97.0, 2, 7.5, "aaaa", "2026-12-02"),
        row("org/vit-plain-seed2", 2, 96.0, 6, None, "aaaa", "2026-12-02"),
        row("facebook/dinov2-small", None, None, None, None, None),
        row("facebook/dinov2-base", None, None, None, None, None),
        row("org/one", 0, 90.0, 0, 1.0, "cccc"),
        row("org/other", 1, 90.0, 0, 1.0, "cccc"),
    ]
    grouped = group_seeds(rows, by_recipe)
    assert [g["model"] for g in grouped] == ["org/vit-plain", "org/vit-gated", "facebook/dinov2-small"] + [
        "facebook/dinov2-base",
        "org/one",  # no common name: the first one
    ]
    plain = grouped[0]
    assert list(plain) == ["model", "seeds", "variant", "seed", "top-1", "loss spikes", "largest activation"] + [
        "recipe",
        "date",
    ]
    # top-1 98, 97, 96: mean 97, sample std sqrt((1 + 0 + 1) / 2) = 1; spikes 1, 2, 6: mean 3, std sqrt(7) = 2.65.
    assert plain["seeds"] == 3 and plain["seed"] == "0, 1, 2"
    assert (plain["top-1"], plain["loss spikes"]) == ("97.0 ± 1.0", "3.0 ± 2.6")
    assert plain["largest activation"] == 7.5  # the only seed that has one
    assert (plain["variant"], plain["recipe"], plain["date"]) == ("plain", "aaaa", "2026-12-01, 2026-12-02")
    assert grouped[1] == {"seeds": 1} | rows[1] and grouped[2] == {"seeds": 1} | rows[4]
    assert (grouped[4]["top-1"], grouped[4]["seed"], grouped[4]["seeds"]) == ("90 ± 0", "0, 1", 2)


def test_the_task_table_takes_the_layer_of_most_sink_attention_and_groups_seeds():
    rows = task_table(TASK_ROWS)
    assert [list(row) for row in rows] == [TASK_HEADINGS] * 3
    nop, broadcast, twin = rows
    assert list(nop.values()) == ["nop-plain", "nop", "plain", 0, 0.03, 0.99, 1, 1.0, 0.0, 0.0]
    # j* attention 0.9 in layer 1 beats 0.6 in layer 2: loss 0.05 -> 0.5 there, x10; events 0 + 0.5 and 0.25 + 0.75.
    assert list(broadcast.values()) == ["broadcast-plain", "broadcast", "plain", 0, 0.05, 0.9, 1, 10.0, 0.5, 1.0]
    assert list(twin.values()) == ["broadcast-plain-seed1", "broadcast", "plain", 1, 0.04, 0.8, 2, 30.0, 0.0, 1.0]
    grouped = group_seeds(rows, by_task_model)
    assert grouped[0] == {"seeds": 1} | nop
    # Sample std of two values: |a - b| / sqrt(2). Loss 0.05, 0.04: 0.045 ± 0.0071; attention 0.9, 0.8: 0.85 ± 0.071;
    # ratio 10, 30: 20 ± 14.1; NOP events 0.5, 0: 0.25 ± 0.35; broadcast events 1, 1: 1 ± 0.
    assert grouped[1] == {
        "model": "broadcast-plain",
        "seeds": 2,
        "task": "broadcast",
        "variant": "plain",
        "seed": "0, 1",
        "task loss": "0.0450 ± 0.0071",
        "sink attention": "0.850 ± 0.071",
        "sink layer": "1, 2",
        "loss ratio, sink zeroed": "20 ± 14",
        "NOP events / seq": "0.25 ± 0.35",
        "broadcast events / seq": "1 ± 0",
    }


def test_markdown_of_both_tables():
    lines = markdown(task_table(TASK_ROWS)).splitlines()
    assert lines[:2] == ["| " + " | ".join(TASK_HEADINGS) + " |", "|" + "---|" * 10]
    assert lines[3] == "| broadcast-plain | broadcast | plain | 0 | 0.05 | 0.9 | 1 | 10.0 | 0.5 | 1.0 |"
    grouped = markdown(group_seeds(task_table(TASK_ROWS), by_task_model)).splitlines()
    assert grouped[0].startswith("| model | seeds | task |")
    cells = "broadcast-plain | 2 | broadcast | plain | 0, 1 | 0.0450 ± 0.0071 | 0.850 ± 0.071 | 1, 2 | 20 ± 14"
    assert grouped[3] == f"| {cells} | 0.25 ± 0.35 | 1 ± 0 |"
    images = [leaderboard_record(reseeded("vit-plain", 0, 0.9805), "vit-plain", None)]
    images.append(leaderboard_record(reseeded("vit-plain", 1, 0.9705), "vit-plain-seed1", None))
    image_lines = markdown(group_seeds(table(images), by_recipe)).splitlines()
    assert image_lines[0] == "| " + " | ".join(["model", "seeds", *HEADINGS[1:]]) + " |"
    dataset = results("vit-plain")["training"]["data"]["dataset"]
    assert image_lines[2].startswith(f"| vit-plain | 2 | plain | toy | {dataset} | 0, 1 | ")
    assert "| 97.55 ± 0.71 |" in image_lines[2]  # top-1 98.05 and 97.05


def test_the_printer_prints_both_tables_and_groups_seeds(tmp_path):
    folder = results_folder(tmp_path / "results")
    command = [sys.executable, str(ROOT / "push" / "leaderboard.py"), "--results", str(folder)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=300)
    grouped = subprocess.run([*command, "--group-seeds"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == grouped.returncode == 0, plain.stderr[-2000:] + grouped.stderr[-2000:]
    images, note, tasks = plain.stdout.strip().split("\n\n")
    assert len(images.splitlines()) == 2 + 4 and note.startswith("Task models")
    twin = "| broadcast-plain-seed1 | broadcast | plain | 1 | 0.04 | 0.8 | 2 | 30.0 | 0.0 | 1.0 |"
    assert tasks.splitlines()[4] == twin
    images, note, tasks, spread = grouped.stdout.strip().split("\n\n")
    assert len(images.splitlines()) == 2 + 3 and "| vit-plain | 2 |" in images
    assert len(tasks.splitlines()) == 2 + 2 and "| broadcast-plain | 2 |" in tasks
    assert "sample standard deviation" in spread


def test_the_printer_reads_the_pushed_dataset(hub, tmp_path):
    assert push(hub, tmp_path, names=NAMES[:2]).returncode == 0
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, str(ROOT / "push" / "leaderboard.py"), "--org", ORG, "--endpoint", hub.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    images = done.stdout.strip().split("\n\n")[0].splitlines()  # the task table follows if the dataset has one
    assert len(images) == 4 and all(f"[{ORG}/{n}]({hub.url}/{ORG}/{n})" in done.stdout for n in NAMES[:2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page_rows(page, table: str = "leaderboard") -> list[list[str]]:
    """The table's rows in the order they appear on the page (top to bottom): gradio keeps each row's element and
    cell ids after sorting and moves it, so DOM order is not display order."""
    # One read of the whole table: row by row, a re-render between two reads could drop or repeat a row.
    read = "rows => rows.map(r => [r.getBoundingClientRect().top, [...r.querySelectorAll('[role=gridcell]')]"
    read += ".map(cell => cell.innerText.trim())])"
    return [cells for _, cells in sorted(page.eval_on_selector_all(f"#{table} [role=row].virtual-row", read))]


def rows_when(page, table: str, ready, timeout: float = 30) -> list[list[str]]:
    """The table's rows once `ready(rows)` holds (an event's update reaches the page a moment later)."""
    deadline = time.monotonic() + timeout
    while not ready(rows := page_rows(page, table)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def test_the_app_shows_both_tables_groups_seeds_and_sorts(tmp_path):
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "spaces" / "leaderboard"))
    try:
        import app as space
    finally:
        sys.path.pop(0)
    folder = results_folder(tmp_path / "results")
    names = ["vit-gated", "vit-plain", "vit-plain-seed1", "vit-reg"]
    port, link = free_port(), "https://hub.example"
    demo = space.build(
        load_records(str(folder)), space.pictures_for(ROOT / "model_cards", None), link, load_task_rows(str(folder))
    )
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#leaderboard [role=row].virtual-row", timeout=60_000)
            shown = {row[0]: row for row in page_rows(page)}
            for name in names:  # the model column links to each repo
                assert page.locator(f'#leaderboard .virtual-row a[href="{link}/{name}"]').count() == 1
            assert sorted(shown) == names
            for name in names:
                result = json.loads((folder / f"{name}.json").read_text())
                row = shown[name]
                assert float(row[HEADINGS.index("top-1")]) == round(100 * result["accuracy"]["top1"], 2)
                assert float(row[HEADINGS.index("sinks / img")]) == round(result["sinks"]["sinks_per_image"], 3)
            assert shown["vit-plain"][HEADINGS.index("largest activation")] == "123"
            assert shown["vit-plain-seed1"][HEADINGS.index("seed")] == "1"

            page.locator("#group-seeds input[type=checkbox]").check()
            grouped = {row[0]: row for row in rows_when(page, "leaderboard", lambda rows: len(rows) == 3)}
            assert sorted(grouped) == ["vit-gated", "vit-plain", "vit-reg"]
            top1 = ["model", "seeds", *HEADINGS[1:]].index("top-1")
            assert grouped["vit-plain"][1:2] == ["2"] and grouped["vit-plain"][top1] == "97.55 ± 0.71"
            assert grouped["vit-gated"][1:2] == ["1"]
            page.locator("#search textarea").fill("PLAIN")  # the filters apply before grouping
            assert [row[:2] for row in rows_when(page, "leaderboard", lambda rows: len(rows) == 1)] == [
                ["vit-plain", "2"]
            ]
            page.locator("#search textarea").fill("")
            assert len(rows_when(page, "leaderboard", lambda rows: len(rows) == 3)) == 3
            page.locator("#group-seeds input[type=checkbox]").uncheck()
            assert len(rows_when(page, "leaderboard", lambda rows: len(rows) == 4)) == 4

            page.locator("#task-models").scroll_into_view_if_needed()
            tasks = {row[0]: row for row in rows_when(page, "task-models", lambda rows: len(rows) == 3)}
            assert sorted(tasks) == ["broadcast-plain", "broadcast-plain-seed1", "nop-plain"]
            assert tasks["nop-plain"][:4] == ["nop-plain", "nop", "plain", "0"]
            assert tasks["broadcast-plain"][5:7] == ["0.9", "1"]  # j* attention and its layer
            page.locator("#group-task-seeds input[type=checkbox]").check()
            grouped = {row[0]: row for row in rows_when(page, "task-models", lambda rows: len(rows) == 2)}
            assert grouped["broadcast-plain"][:6] == ["broadcast-plain", "2", "broadcast", "plain", "0, 1"] + [
                "0.0450 ± 0.0071"
            ]

            column = HEADINGS.index("top-1")
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


def test_a_penalised_recipe_is_its_own_variant():
    penalised = leaderboard_record(reseeded("vit-plain", 0, 0.9) | {"name": "p"}, "org/p", None)
    assert penalised["model"]["variant"] == "plain"
    result = reseeded("vit-plain", 0, 0.9)
    result["training"]["train"]["common_mode_penalty"] = 1.0
    assert leaderboard_record(result, "org/p", None)["model"]["variant"] == "plain-penalty"


def with_dense(result: dict, miou: float) -> dict:
    """`result` with a dense_probe block (the probe's other numbers fixed)."""
    block = {"dataset": "canvas-digits", "split": "test", "layer": None, "miou": miou, "foreground_miou": 0.25}
    block |= {"accuracy": 0.975, "pixel_miou": None, "settings": {"train_images": 12, "eval_images": 5}}
    return result | {"dense_probe": block}


def unprobed(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "dense_probe"}


def test_the_dense_probe_miou_is_a_percent_column_and_seed_groups_average_it():
    record = leaderboard_record(with_dense(results("vit-plain"), 0.33137), "org/vit-plain", None)
    assert record["results"]["dense_probe"] == {"miou": 0.33137, "foreground_miou": 0.25, "accuracy": 0.975} | {
        "pixel_miou": None
    }
    row = table([record])[0]
    assert row["mIoU"] == 33.14  # 0.33137 as percent, two decimals like top-1
    assert row["top-1"] == round(100 * results("vit-plain")["accuracy"]["top1"], 2)  # still read from the dataset
    without = leaderboard_record(unprobed(results("vit-plain")), "org/vit-plain", None)
    assert "dense_probe" not in without["results"] and table([without])[0]["mIoU"] is None
    assert "| - |" in markdown(table([without]))
    # Seeds 0 and 1 probed (mIoU 33.1% and 30.1%), seed 2 not: mean 31.6, sample std |33.1 - 30.1| / sqrt(2) = 2.12.
    seeds = [with_dense(reseeded("vit-plain", 0, 0.98), 0.331), with_dense(reseeded("vit-plain", 1, 0.97), 0.301)]
    seeds.append(unprobed(reseeded("vit-plain", 2, 0.96)))
    records = [leaderboard_record(result, f"org/{result['name']}", None) for result in seeds]
    grouped = group_seeds(table(records), by_recipe)
    assert len(grouped) == 1 and (grouped[0]["seeds"], grouped[0]["mIoU"]) == (3, "31.6 ± 2.1")
    assert grouped[0]["top-1"] == "97.0 ± 1.0"


@pytest.mark.parametrize("app", ["spaces/leaderboard/app.py", "spaces/inspector/app.py"])
@pytest.mark.parametrize("missing", ["gradio", "pandas"])
def test_an_app_without_its_extra_says_what_to_install(app, missing):
    # None in sys.modules makes the import fail exactly as an absent package does (ModuleNotFoundError).
    code = f"import runpy, sys; sys.modules[{missing!r}] = None; runpy.run_path({app!r}, run_name='__main__')"
    env = os.environ | {"PYTHONPATH": str(ROOT / Path(app).parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"{app}: needs {missing}; install the hub extra: pip install -e '.[hub]'\n"


def test_the_space_shows_the_figures_the_report_makes():
    """hub/leaderboard.py cannot import diagnostics.plots (it runs alone in the Space): its names must be these."""
    from sink_models.diagnostics.plots import FIGURES as made
    from sink_models.hub.leaderboard import FIGURES as shown

    assert shown == tuple(made)
