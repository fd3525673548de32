"""push/run.py against the local Hub-compatible server: the real huggingface_hub client, in a fresh process (in
this one for the quick error-path cases)."""

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import conftest
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download, parse_eval_result_entries
from huggingface_hub.errors import HFValidationError
from packaging.requirements import Requirement
from test_hub_server import TOKEN, lfs_uploads, subprocess_env

from sink_models import SinkViTForImageClassification
from sink_models.evaluation.cards import ZOO_VERSION
from sink_models.hub.publish import retried

ROOT = Path(__file__).resolve().parents[1]
NAME, ORG = "vit-gated-reg", "testorg"
REPO = f"{ORG}/{NAME}"
# What the Hub stores through LFS: the weights and the card's figures (binaries); text files stay in git.
LFS = {"model.safetensors", *(p.name for p in (ROOT / "model_cards" / NAME).glob("*.png"))}


def push(hub, tmp_path, *options, names=(NAME,)):
    command = [sys.executable, str(ROOT / "push" / "run.py"), "--org", ORG, "--retry-wait", "0.01"]
    command += ["--log", str(tmp_path / "push_log.jsonl"), *options]
    env = subprocess_env(hub, tmp_path)
    return subprocess.run([*command, *names], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def in_fresh_process(hub, tmp_path, code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=subprocess_env(hub, tmp_path)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pushed(hub, tmp_path):
    done = push(hub, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_pushed_model_loads_with_remote_code_at_its_tag_and_carries_its_card(hub, pushed, tmp_path):
    local = SinkViTForImageClassification.from_pretrained(ROOT / "zoo" / NAME).eval()
    images = conftest.images(local.config, batch=2, seed=1)
    torch.save(images, tmp_path / "images.pt")
    loaded = in_fresh_process(
        hub,
        tmp_path,
        f"""
import hashlib, json, os, torch
from huggingface_hub import ModelCard, hf_hub_download
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("{REPO}", trust_remote_code=True, revision="{ZOO_VERSION}")
model.eval()
with torch.no_grad():
    logits = model(torch.load("{tmp_path / "images.pt"}")).logits
card = ModelCard.load("{REPO}")
metrics = {{(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}}
weights = hf_hub_download("{REPO}", "model.safetensors", revision="{ZOO_VERSION}")  # cached by from_pretrained
print(json.dumps({{"module": type(model).__module__, "logits": logits.tolist(), "text": card.text,
                  "top1": metrics[("accuracy", "top1")], "sinks": metrics[("sinks_per_image", None)],
                  "weights": hashlib.sha256(open(weights, "rb").read()).hexdigest(),
                  "blob": os.path.basename(os.path.realpath(weights))}}))
""",
    )
    assert loaded["module"].startswith("transformers_modules")  # the repo's own code ran
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["logits"]), local(images).logits, atol=1e-5, rtol=0)
    result = json.loads((ROOT / "results" / f"{NAME}.json").read_text())
    assert loaded["top1"] == result["accuracy"]["top1"] and loaded["sinks"] == result["sinks"]["sinks_per_image"]
    assert f'from_pretrained("{REPO}", trust_remote_code=True, revision="{ZOO_VERSION}")' in loaded["text"]
    files = hub.files(REPO)
    assert {"model.safetensors", "modeling_sink_vit.py", "results.json", "events_by_head.png"} <= set(files)
    assert files["training_summary.json"] == (ROOT / "zoo" / NAME / "training_summary.json").read_bytes()
    assert not any(path.endswith((".bin", ".pt", ".pth")) for path in files)
    # The weights and figures travelled as LFS objects (uploaded, verified, committed as pointers) and came back
    # as the same bytes, cached under their sha256; README.md, config.json and the code stayed git files.
    assert hub.lfs_paths(REPO) == LFS and {"README.md", "config.json", "modeling_sink_vit.py"}.isdisjoint(LFS)
    local = {path: sha256(ROOT / "model_cards" / NAME / path) for path in LFS - {"model.safetensors"}}
    local["model.safetensors"] = sha256(ROOT / "zoo" / NAME / "model.safetensors")
    assert sorted(lfs_uploads(hub.requests)) == sorted(local.values())
    assert loaded["weights"] == loaded["blob"] == local["model.safetensors"]
    tagged = f"/{REPO}/resolve/{hub.commits(REPO)[0]}/model.safetensors"  # transformers resolves the tag first
    assert any(r.method == "GET" and r.path == tagged and r.status == 200 for r in hub.requests)
    assert hub.lfs_paths(f"{ORG}/sink-zoo-results", "dataset") == set()


def test_the_results_dataset_loads_with_datasets(hub, pushed, tmp_path):
    rows = in_fresh_process(
        hub,
        tmp_path,
        f"""
import json, datasets
rows = datasets.load_dataset("{ORG}/sink-zoo-results", split="train")
print(json.dumps(rows.to_list(), default=str))
""",
    )
    heads = hub.commits(REPO)
    assert [row["config"]["model_name"] for row in rows] == [REPO]
    assert rows[0]["config"]["model_sha"] == heads[0]
    result = json.loads((ROOT / "results" / f"{NAME}.json").read_text())
    assert rows[0]["results"][result["dataset"]["name"]]["top1"] == result["accuracy"]["top1"]
    assert rows[0]["results"]["sinks"]["nop_per_image"] == result["sinks"]["nop_per_image"]
    # The synthetic-task rows travel verbatim beside the records (which alone make the rows above).
    synthetic = (ROOT / "results" / "synthetic.json").read_bytes()
    assert hub.files(f"{ORG}/sink-zoo-results", "dataset")["synthetic.json"] == synthetic


def test_a_second_push_makes_no_commit_and_a_dry_run_changes_nothing(hub, pushed, tmp_path):
    repos = (
        (REPO, "model"),
        (f"{ORG}/sink-zoo-results", "dataset"),
        (f"{ORG}/sink-zoo-leaderboard", "space"),
        (f"{ORG}/sink-zoo-inspector", "space"),
    )
    before = {repo: hub.commits(*repo) for repo in repos}
    log = (tmp_path / "push_log.jsonl").read_text()
    seen = len(hub.requests)
    again = push(hub, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {repo: hub.commits(*repo) for repo in before} == before
    # No LFS upload, no write, no parity reload (nothing to commit), and nothing logged.
    assert lfs_uploads(hub.requests[seen:]) == [] and not any(r.mutated for r in hub.requests[seen:])
    assert f"{REPO}: unchanged at {before[REPO, 'model'][0][:12]}; tag {ZOO_VERSION} present" in again.stdout
    assert "parity" not in again.stdout and (tmp_path / "push_log.jsonl").read_text() == log
    seen = len(hub.requests)
    dry = push(hub, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert {request.method for request in hub.requests[seen:]} <= {"GET", "HEAD"}  # it only reads
    # The head for the results record is the one plan() read: one read of the model repo's files.
    assert [r.path for r in hub.requests[seen:]].count(f"/api/models/{REPO}") == 1
    assert f"unchanged {REPO}" in dry.stdout and f"unchanged dataset {ORG}/sink-zoo-results" in dry.stdout
    assert f"unchanged space {ORG}/sink-zoo-leaderboard" in dry.stdout
    assert f"unchanged space {ORG}/sink-zoo-inspector" in dry.stdout
    assert "unchanged collection 'Attention-sink ViT zoo'" in dry.stdout


def test_a_dry_run_on_an_empty_hub_lists_what_it_would_create(hub, tmp_path):
    dry = push(hub, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"create {REPO} with" in dry.stdout and f"; tag {ZOO_VERSION}" in dry.stdout
    assert f"create space {ORG}/sink-zoo-inspector with" in dry.stdout
    assert {request.method for request in hub.requests} <= {"GET", "HEAD"}


def test_changed_content_under_a_published_tag_is_refused_before_any_write(hub, pushed, tmp_path):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.upload_file(path_or_fileobj=b"edited on the Hub", path_in_repo="README.md", repo_id=REPO)
    heads = hub.commits(REPO)
    done = push(hub, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {REPO}: README.md changed, but tag {ZOO_VERSION} is already published; a version never moves: raise "
        "sink_models.evaluation.cards.ZOO_VERSION."
    )
    assert hub.commits(REPO) == heads
    dry = push(hub, tmp_path, "--dry-run")
    assert f"update {REPO}: README.md (refused: tag {ZOO_VERSION} is published)" in dry.stdout


def test_a_new_version_is_pushed_beside_the_old_one_which_stays_as_it_was(hub, run_push, tmp_path):
    old = tmp_path / "v1"
    old.mkdir()
    v1_files = {
        "README.md": b"# the v1 card\n",
        "config.json": b'{"model_type": "sink_vit"}\n',
        "model.safetensors": b"\0old weights",  # a binary: stored through LFS
        "attention_layer9.png": b"\x89PNG\0old figure",  # a figure v2 no longer has
    }
    for path, content in v1_files.items():
        (old / path).write_bytes(content)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    v1 = api.upload_folder(repo_id=REPO, folder_path=old).oid
    api.create_tag(REPO, tag="v1", revision=v1)

    code, out, err = run_push()
    assert code == 0, err
    head = hub.commits(REPO)[0]
    assert f"{REPO}: at {head[:12]} (parity 0.0e+00); tag {ZOO_VERSION} created" in out  # parity stubbed
    tags = {ref.name: ref.target_commit for ref in api.list_repo_refs(REPO).tags}
    assert tags == {"v1": v1, ZOO_VERSION: head} and head != v1
    # v1 resolves to its commit, with the same bytes as before; the new version has none of its leftovers.
    cache = tmp_path / "downloads"
    for path, content in v1_files.items():
        at_v1 = hf_hub_download(REPO, path, revision="v1", endpoint=hub.url, token=TOKEN, cache_dir=cache)
        assert Path(at_v1).read_bytes() == content
    assert set(hub.files(REPO, revision="v1")) == {".gitattributes", *v1_files}
    now = hub.files(REPO, revision=ZOO_VERSION)
    assert "attention_layer9.png" not in now
    assert now["model.safetensors"] == (ROOT / "zoo" / NAME / "model.safetensors").read_bytes()
    card = hf_hub_download(REPO, "README.md", revision=ZOO_VERSION, endpoint=hub.url, token=TOKEN, cache_dir=cache)
    assert f'from_pretrained("{REPO}", trust_remote_code=True, revision="{ZOO_VERSION}")' in Path(card).read_text()
    assert f'AutoImageProcessor.from_pretrained("{REPO}", revision="{ZOO_VERSION}")' in Path(card).read_text()


def test_a_stale_file_is_listed_for_deletion_and_refused_under_a_published_tag(hub, run_push):
    code, out, err = run_push()
    assert code == 0, err
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.upload_file(path_or_fileobj=b"added on the Hub", path_in_repo="notes.txt", repo_id=REPO)
    heads = hub.commits(REPO)
    assert (
        run_push("--dry-run")[1].splitlines()[0]
        == f"update {REPO}: delete notes.txt (refused: tag {ZOO_VERSION} is published)"
    )
    code, out, err = run_push()
    assert (code, err.splitlines()[-1]) == (
        1,
        f"error: {REPO}: notes.txt changed, but tag {ZOO_VERSION} is already published; a version never moves: "
        "raise sink_models.evaluation.cards.ZOO_VERSION.",
    )
    assert hub.commits(REPO) == heads


def test_the_eval_results_file_and_the_model_index_report_the_same_numbers(hub, run_push, tmp_path):
    code, out, err = run_push()
    assert code == 0, err
    result = json.loads((ROOT / "results" / f"{NAME}.json").read_text())
    dataset = result["dataset"]["name"]
    path = f".eval_results/{dataset}.yaml"
    assert [p for p in hub.files(REPO) if p.startswith(".eval_results/")] == [path]
    download = dict(revision=ZOO_VERSION, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "downloads")
    entries = parse_eval_result_entries(yaml.safe_load(Path(hf_hub_download(REPO, path, **download)).read_text()))
    card = ModelCard.load(hf_hub_download(REPO, "README.md", **download))
    index = {r.metric_config or r.metric_type: r.metric_value for r in card.data.eval_results}
    assert {e.task_id: e.value for e in entries} == index
    # Both are the results JSON's numbers.
    sinks = result["sinks"]
    assert index == {
        "top1": result["accuracy"]["top1"],
        "top5": result["accuracy"]["top5"],
        "sinks_per_image": sinks["sinks_per_image"],
        "nop_per_image": sinks["nop_per_image"],
        "broadcast_per_image": sinks["broadcast_per_image"],
        "cls_sink_share": sinks["sink_share"]["cls"],
        "register_sink_share": sinks["sink_share"]["register"],
        "patch_sink_share": sinks["sink_share"]["patch"],
        "dense_probe_miou": result["dense_probe"]["miou"],
        "dense_probe_accuracy": result["dense_probe"]["accuracy"],
    }
    assert {(e.dataset_id, e.date) for e in entries} == {(dataset, result["date"])}


def test_the_token_is_never_uploaded_or_printed(hub, pushed, tmp_path):
    for repo, kind in (
        (REPO, "model"),
        (f"{ORG}/sink-zoo-results", "dataset"),
        (f"{ORG}/sink-zoo-leaderboard", "space"),
        (f"{ORG}/sink-zoo-inspector", "space"),
    ):
        assert not any(TOKEN.encode() in content for content in hub.files(repo, kind).values())
    assert TOKEN not in pushed.stdout + pushed.stderr
    log = [json.loads(line) for line in (tmp_path / "push_log.jsonl").read_text().splitlines()]
    assert [entry["repo_id"] for entry in log] == [
        REPO,
        f"{ORG}/sink-zoo-results",
        f"{ORG}/sink-zoo-leaderboard",
        f"{ORG}/sink-zoo-inspector",
    ]
    assert log[0]["commit"] == hub.commits(REPO)[0] and TOKEN not in json.dumps(log)
    assert all(TOKEN not in path.read_text() for path in (tmp_path / "hf-home").rglob("*.json"))


def test_transient_server_errors_are_retried(hub, tmp_path):
    hub.fail_next(2, status=500, route_contains="/commit/")
    done = push(hub, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(hub.commits(REPO)) == 2  # the initial commit and the pushed one


def test_a_server_that_keeps_failing_stops_the_push_cleanly(hub, tmp_path):
    hub.fail_always(status=500, route_contains="/commit/")
    done = push(hub, tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {REPO}: commit: HfHubHTTPError") and "after 4 attempts" in lines[-1]
    hub.clear_faults()
    assert len(hub.commits(REPO)) == 1 and set(hub.files(REPO)) == {".gitattributes"}  # nothing half-pushed
    assert HfApi(endpoint=hub.url, token=TOKEN).list_repo_refs(REPO).tags == []
    assert not any("sink-zoo-results" in request.path for request in hub.requests)  # it stopped at the model


def test_the_space_and_the_collection(hub, pushed, tmp_path):
    space = hub.files(f"{ORG}/sink-zoo-leaderboard", "space")
    assert {"app.py", "leaderboard.py", "requirements.txt", "README.md"} <= set(space)
    assert space["results_repo.txt"].decode().strip() == f"{ORG}/sink-zoo-results"
    assert space["leaderboard.py"] == (ROOT / "sink_models" / "hub" / "leaderboard.py").read_bytes()
    assert b"sdk: gradio" in space["README.md"]
    collection = hub.collection(ORG, "Attention-sink ViT zoo")
    assert [(item["id"], item["type"]) for item in collection["items"]] == [
        (REPO, "model"),
        (f"{ORG}/sink-zoo-results", "dataset"),
        (f"{ORG}/sink-zoo-leaderboard", "space"),
        (f"{ORG}/sink-zoo-inspector", "space"),
    ]
    again = push(hub, tmp_path)
    assert "collection 'Attention-sink ViT zoo': 0 item(s) added, 4 present" in again.stdout
    assert len(hub.collection(ORG, "Attention-sink ViT zoo")["items"]) == 4


def test_the_inspector_space_carries_the_app_a_copy_of_the_library_and_the_pushed_models(hub, pushed):
    space = hub.files(f"{ORG}/sink-zoo-inspector", "space")
    for name in ("app.py", "runner.py", "README.md"):  # as they are in the repo now
        assert space[name] == (ROOT / "spaces" / "inspector" / name).read_bytes()
    assert b"sdk: gradio" in space["README.md"]
    # torch's CPU wheels, then the library's runtime requirements of pyproject.toml, without the extras (gradio
    # comes with the Space's sdk).
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    lines = space["requirements.txt"].decode().splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert space["requirements.txt"].endswith(b"\n")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    as_set = lambda requirements: {(r.name, r.specifier) for r in map(Requirement, requirements)}  # noqa: E731
    assert as_set(lines[1:]) == as_set(declared) and {"torch", "transformers"} <= {name for name, _ in as_set(declared)}
    assert space["zoo_models.txt"] == f"{REPO}\n".encode()  # the models of this push
    # The Space loads SinkViT checkpoints with its copy of the library, never with a repo's own code.
    for path in ("modeling_sink_vit.py", "loading.py", "hub/leaderboard.py"):
        assert space[f"sink_models/{path}"] == (ROOT / "sink_models" / path).read_bytes()
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in space)


def test_a_malformed_answer_ends_a_run_with_one_line(hub, tmp_path):
    # The incident: a read-only mirror answered list_collections with a 200 HTML page.
    hub.fail_always(status=200, route_contains="/api/collections", method="GET", body="html")
    dry = push(hub, tmp_path, "--dry-run")
    assert (dry.returncode, dry.stderr.splitlines()) == (
        1,
        [
            f"error: {ORG}: collection read: unexpected answer from the server: JSONDecodeError: Expecting value: "
            "line 1 column 1 (char 0) (after 1 attempt)."
        ],
    )


@pytest.fixture
def push_script(monkeypatch):
    """push/run.py as a module, its parity reload stubbed out."""
    spec = importlib.util.spec_from_file_location("push_script", ROOT / "push" / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "parity_check", lambda staged, local: 0.0)
    return script


@pytest.fixture
def run_push(hub, push_script, tmp_path, monkeypatch, capsys):
    """push/run.py's cli in this process, without the seconds of a fresh interpreter and of the parity reload
    (which every subprocess push above runs): returns (exit code, stdout, stderr)."""
    script = push_script
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    options = ["--org", ORG, "--endpoint", hub.url, "--retry-wait", "0.01", "--log", str(tmp_path / "push_log.jsonl")]

    def run(*more: str) -> tuple[int, str, str]:
        code = script.cli([*options, *more, NAME])
        return code, *capsys.readouterr()

    return run


def test_a_push_without_the_synthetic_results_writes_nothing(hub, push_script, run_push, monkeypatch, tmp_path):
    missing = tmp_path / "results" / "synthetic.json"
    monkeypatch.setattr(push_script, "SYNTHETIC", missing)
    assert run_push() == (1, "", f"error: missing {missing}; run eval/run.py first.\n")
    assert hub.requests == []


def test_a_zoo_model_the_results_dataset_would_not_load_is_refused(push_script, monkeypatch, capsys):
    monkeypatch.setattr(push_script, "ZOO", ["deit-plain"])
    with pytest.raises(SystemExit) as stopped:
        push_script.cli(["--org", ORG, "--dry-run"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err.splitlines()[-1].split(": error: ")[1]  # after the program's name
    assert (
        message == "zoo models ['deit-plain'] are not named vit-*: the results dataset's config loads vit-*.json only"
    )


UNREADABLE = "unexpected answer from the server: "


@pytest.mark.parametrize(
    ("dry_run", "method", "route", "status", "body", "where", "summary"),
    [
        (True, "GET", "/api/collections", 200, "keys", f"{ORG}: collection read", UNREADABLE + "TypeError: .*"),
        (True, "GET", "/api/datasets/", 200, "json", f"{ORG}/sink-zoo-results: read", UNREADABLE + "JSONDecodeError.*"),
        (False, "GET", f"/api/models/{REPO}", 200, "keys", f"{REPO}: read", UNREADABLE + "KeyError: 'id'"),
        (False, "POST", "/api/repos/create", 200, "keys", f"{REPO}: create", UNREADABLE + "KeyError: 'url'"),
        (False, "POST", "/preupload/", 200, "html", f"{REPO}: commit", UNREADABLE + "JSONDecodeError: .*"),
        (False, "POST", "/objects/batch", 200, "keys", f"{REPO}: commit", UNREADABLE + "ValueError: Malformed .*"),
        # An LFS upload that fails is reported with its file and the Hub's answer.
        (False, "PUT", "/info/lfs/objects/", 403, "error", f"{REPO}: commit",
         r"Error while uploading '.+' to the Hub\. HfHubHTTPError: .*403.*"),
        (False, "POST", "/commit/", 200, "keys", f"{REPO}: commit", UNREADABLE + "KeyError: 'commitUrl'"),
        (False, "GET", "/refs", 200, "html", f"{REPO}: refs", UNREADABLE + "JSONDecodeError: .*"),
        (False, "POST", "/api/collections", 200, "keys", f"{ORG}: collection create", UNREADABLE + "KeyError: 'slug'"),
    ],
)  # fmt: skip
def test_every_unexpected_answer_is_one_error_line(hub, run_push, dry_run, method, route, status, body, where, summary):
    hub.fail_always(status=status, route_contains=route, method=method, body=body)
    code, out, err = run_push(*(["--dry-run"] if dry_run else []))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    assert re.fullmatch(rf"error: {where}: {summary} \(after 1 attempt\)\.", errors[0]), errors[0]


def test_retry_wait_reaches_every_step(hub, run_push, monkeypatch):
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)
    for route in ("/api/repos/create", "/commit/", "/tag/"):
        hub.fail_next(1, status=503, route_contains=route, method="POST")
    code, out, err = run_push()
    assert code == 0, err
    assert waits == [0.01] * 3  # one retry each, after --retry-wait seconds (the client itself retries none)


@pytest.mark.parametrize(
    ("call", "raised"),
    [
        (lambda: {}["key"], KeyError),  # a bug of ours, not an answer of the server's
        (lambda: HfApi(endpoint="http://127.0.0.1:9").create_repo("bad id!!"), HFValidationError),
        (lambda: HfApi(endpoint="http://127.0.0.1:9").upload_folder(repo_id="a/b", folder_path=".", oops=1), TypeError),
    ],
)
def test_our_own_errors_keep_their_traceback(call, raised):
    with pytest.raises(raised):
        retried(call, "org/repo: step", attempts=1)
