"""The local Hub-compatible server (tests/hub_server/) against the real huggingface_hub, datasets and transformers."""

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from json import JSONDecodeError
from pathlib import Path

import pytest
from hub_server import LFS_MIN_SIZE, git_blob_oid, lfs_pointer
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info

TOKEN = "hf_test_token_do_not_leak"
REPO = "test-org/tiny"


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


def write_files(folder, files):
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    return folder


FILES = {
    "README.md": b"---\nlicense: mit\n---\n# tiny\n",
    "config.json": b'{"hidden_size": 32}',
    "sub/notes.txt": b"hello",
}


def request(hub, path: str, payload: object = None, *, method: str = "POST", data: bytes | None = None, token=TOKEN):
    """A raw request (for what the client never sends); returns (status, parsed JSON body or None)."""
    body = data if data is not None else json.dumps(payload).encode() if payload is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(hub.url + path, body, headers, method=method)) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    return status, json.loads(text) if text else None


def subprocess_env(hub, tmp_path):
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
    }


def test_create_repo_and_whoami(api, hub):
    assert api.whoami()["name"] == "test-user"
    url = api.create_repo(REPO)
    assert (url.repo_id, url.repo_type) == (REPO, "model")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    api.create_repo(REPO, repo_type="dataset")  # same name, other type: another repo
    api.create_repo("tiny-space", repo_type="space", space_sdk="gradio")  # no namespace: the user's
    assert api.space_info("test-user/tiny-space").sdk == "gradio"
    # Like the Hub, a new repo holds one commit with a .gitattributes.
    assert len(hub.commits(REPO)) == len(hub.commits(REPO, "dataset")) == 1
    assert api.list_repo_files(REPO) == [".gitattributes"]


def test_upload_folder_then_identical_upload_makes_no_commit(api, hub, tmp_path):
    folder = write_files(tmp_path / "upload", FILES)
    api.create_repo(REPO)
    info = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="first upload")
    commits = hub.commits(REPO)
    assert len(commits) == 2 and info.oid == commits[0] == api.model_info(REPO).sha
    assert hub.files(REPO) == {".gitattributes": hub.files(REPO)[".gitattributes"], **FILES}
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "README.md", "config.json", "sub/notes.txt"]
    assert api.list_repo_commits(REPO)[0].title == "first upload"

    # Preupload answers the oids of the current files, so the client drops them all and sends no commit.
    seen = len(hub.requests)
    again = api.upload_folder(folder_path=folder, repo_id=REPO)
    assert again.oid == commits[0] and hub.commits(REPO) == commits
    later = hub.requests[seen:]
    assert not any(r.mutated for r in later)
    assert [r.path for r in later if "/commit/" in r.path] == []
    preupload = next(r for r in later if "/preupload/" in r.path)
    assert [f["path"] for f in preupload.json()["files"]] == sorted(FILES)

    # Writes carried the token, and no stored file contains it.
    writes = [r for r in hub.requests if r.mutated]
    assert writes and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert not any(TOKEN.encode() in content for content in hub.files(REPO).values())


def test_tags_branches_and_downloads(api, hub, tmp_path):
    api.create_repo(REPO)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="weights.txt", repo_id=REPO).oid
    api.create_tag(REPO, tag="v1.0")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.txt", repo_id=REPO)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_tag(REPO, tag="v1.0")
    assert conflict.value.response.status_code == 409
    api.create_tag(REPO, tag="v1.0", exist_ok=True)
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="v9", revision="no-such-branch")

    api.create_branch(REPO, branch="dev", revision="v1.0")
    on_dev = api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id=REPO, revision="dev").oid
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": hub.commits(REPO)[0], "dev": on_dev}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", first)]
    assert hub.commits(REPO, revision="dev")[1] == first
    assert api.model_info(REPO, revision="v1.0").sha == first

    seen = len(hub.requests)
    cache = tmp_path / "cache"
    at_tag = hf_hub_download(REPO, "weights.txt", revision="v1.0", endpoint=hub.url, cache_dir=cache)
    at_main = hf_hub_download(REPO, "weights.txt", endpoint=hub.url, cache_dir=cache)
    by_oid = hf_hub_download(REPO, "weights.txt", revision=first, endpoint=hub.url, cache_dir=cache)
    assert open(at_tag, "rb").read() == open(by_oid, "rb").read() == b"v1" and open(at_main, "rb").read() == b"v2"
    assert f"/snapshots/{first}/" in at_tag
    downloads = [(r.method, r.path) for r in hub.requests[seen:]]
    assert ("HEAD", f"/{REPO}/resolve/v1.0/weights.txt") in downloads
    assert ("GET", f"/{REPO}/resolve/v1.0/weights.txt") in downloads
    head = next(r for r in hub.requests[seen:] if r.method == "HEAD")
    assert head.status == 200


def test_tree_paths_info_and_ranges(api, hub, tmp_path):
    api.create_repo(REPO)
    api.upload_folder(folder_path=write_files(tmp_path / "upload", FILES), repo_id=REPO)
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(REPO)}
    assert top == {("RepoFile", ".gitattributes"), ("RepoFile", "README.md"), ("RepoFile", "config.json")} | {
        ("RepoFolder", "sub")
    }
    [notes] = api.list_repo_tree(REPO, path_in_repo="sub", expand=True)
    assert (notes.path, notes.size, notes.blob_id) == ("sub/notes.txt", 5, git_blob_oid(b"hello"))
    assert notes.last_commit.oid == hub.commits(REPO)[0]
    assert {e.path for e in api.list_repo_tree(REPO, recursive=True)} >= {"sub", "sub/notes.txt"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="missing"))
    infos = api.get_paths_info(REPO, ["config.json", "sub", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "config.json"), ("RepoFolder", "sub")]
    assert api.file_exists(REPO, "sub/notes.txt") and not api.file_exists(REPO, "nope.txt")

    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    assert fs.cat(f"{REPO}/sub/notes.txt") == b"hello"
    url = f"{hub.url}/{REPO}/resolve/main/sub/notes.txt"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=1-2"})) as response:
        assert (response.status, response.read()) == (206, b"el")
    with pytest.raises(urllib.error.HTTPError) as past_the_end:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=9-"}))
    assert past_the_end.value.code == 416


def test_missing_repo_revision_and_file(api, hub, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/missing", "config.json", endpoint=hub.url, cache_dir=tmp_path)
    api.create_repo(REPO, repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="v404")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            REPO, ".gitattributes", repo_type="dataset", revision="v404", endpoint=hub.url, cache_dir=tmp_path
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.json", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)
    assert {r.status for r in hub.requests if r.method == "HEAD"} == {404}


def test_writes_need_a_token(hub):
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as refused:
        anonymous.create_repo(REPO)
    # A plain 401, not a RepositoryNotFoundError: the client reads the server's message as bad credentials.
    assert refused.value.response.status_code == 401 and not isinstance(refused.value, RepositoryNotFoundError)
    assert not any(r.mutated for r in hub.requests)


def test_failed_commit_changes_nothing(api, hub):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=REPO)
    before = hub.commits(REPO)
    operations = [
        CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"b"),
        CommitOperationDelete(path_in_repo="not-there.txt"),
    ]
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=operations, commit_message="half")
    assert hub.commits(REPO) == before and "b.txt" not in hub.files(REPO)

    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(path_or_fileobj=b"c", path_in_repo="c.txt", repo_id=REPO, parent_commit=before[-1])
    assert stale.value.response.status_code == 412 and hub.commits(REPO) == before

    # The client skips a commit without operations; sent anyway, it succeeds and moves main to an identical tree.
    header = json.dumps({"key": "header", "value": {"summary": "empty", "description": ""}}).encode()
    empty = urllib.request.Request(
        f"{hub.url}/api/models/{REPO}/commit/main",
        data=header + b"\n",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(empty) as response:
        oid = json.load(response)["commitOid"]
    assert hub.commits(REPO) == [oid, *before] and hub.files(REPO, revision=before[0]) == hub.files(REPO)


def test_injected_commit_failures_then_retry(api, hub):
    api.create_repo(REPO)
    before = hub.commits(REPO)
    hub.fail_next(2, status=500, route_contains="/commit/")
    # create_commit does not retry its POST /commit (a retry could commit twice): every attempt surfaces.
    statuses = []
    for _ in range(3):
        try:
            info = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
        except HfHubHTTPError as error:
            statuses.append(error.response.status_code)
            assert hub.commits(REPO) == before
        else:
            break
    assert statuses == [500, 500] and hub.commits(REPO) == [info.oid, *before]
    assert [r.status for r in hub.requests if "/commit/" in r.path] == [500, 500, 200]


def test_injected_preupload_failures_are_retried_by_the_client(api, hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # 1 s, 2 s backoff
    api.create_repo(REPO)
    hub.fail_next(2, status=503, route_contains="/preupload/")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert [r.status for r in hub.requests if "/preupload/" in r.path] == [503, 503, 200]

    hub.fail_always(status=502, route_contains="/refs", method="GET")
    for _ in range(2):
        with pytest.raises(HfHubHTTPError):
            api.list_repo_refs(REPO)
    hub.clear_faults()
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]


def test_load_dataset_in_subprocess(api, hub, tmp_path):
    api.create_repo(REPO, repo_type="dataset")
    rows = [{"x": 1, "label": "a"}, {"x": 2, "label": "b"}]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    api.upload_file(path_or_fileobj=data, path_in_repo="data/train.jsonl", repo_id=REPO, repo_type="dataset")
    code = f"import datasets, json; print(json.dumps(datasets.load_dataset({REPO!r}, split='train').to_list()))"
    seen = len(hub.requests)
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(hub, tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == rows
    assert any(r.method == "GET" and r.path.endswith("/data/train.jsonl") for r in hub.requests[seen:])


def test_autoconfig_from_pretrained_in_subprocess(api, hub, tmp_path):
    api.create_repo(REPO)
    config = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id=REPO)
    api.create_tag(REPO, tag="v1")
    code = (
        "from transformers import AutoConfig\n"
        f"config = AutoConfig.from_pretrained({REPO!r}, revision='v1')\n"
        "print(type(config).__name__, config.hidden_size)"
    )
    seen = len(hub.requests)
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(hub, tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ViTConfig", "32"]
    assert any(r.method == "GET" and r.path.endswith("/config.json") for r in hub.requests[seen:])


# Binaries (a NUL byte), tracked names at any depth and big files go through LFS; text stays a regular git file.
LFS_FILES = {
    "model.safetensors": b"text, but tracked by *.safetensors",
    "figures/plot.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)),
    "big.txt": b"a" * (LFS_MIN_SIZE + 1),
}


def lfs_uploads(requests) -> list[str]:
    """The sha256 of every LFS object PUT in `requests`."""
    return [r.path.rsplit("/", 1)[-1] for r in requests if r.method == "PUT"]


def test_lfs_uploads_and_downloads(api, hub, tmp_path):
    folder = write_files(tmp_path / "upload", {**FILES, **LFS_FILES})
    api.create_repo(REPO)
    seen = len(hub.requests)
    first = api.upload_folder(folder_path=folder, repo_id=REPO).oid
    sha256 = {path: hashlib.sha256(content).hexdigest() for path, content in LFS_FILES.items()}
    assert hub.lfs_paths(REPO) == set(LFS_FILES)
    assert sorted(lfs_uploads(hub.requests[seen:])) == sorted(sha256.values())
    verified = [r.json()["oid"] for r in hub.requests[seen:] if r.path.endswith("/verify")]
    assert sorted(verified) == sorted(sha256.values())
    commit = next(r for r in hub.requests[seen:] if "/commit/" in r.path)
    lines = [json.loads(line) for line in commit.body.splitlines()]
    assert {line["value"]["path"]: line["key"] for line in lines[1:]} == {p: "file" for p in FILES} | {
        p: "lfsFile" for p in LFS_FILES
    }
    assert hub.files(REPO) == {".gitattributes": hub.files(REPO)[".gitattributes"], **FILES, **LFS_FILES}

    # Trees, paths-info and repo info describe LFS files as the Hub does: the git oid is the pointer's.
    for entry in [*api.list_repo_tree(REPO, recursive=True), *api.get_paths_info(REPO, ["model.safetensors"])]:
        content = LFS_FILES.get(entry.path)
        if content is None:
            assert getattr(entry, "lfs", None) is None
            continue
        pointer = lfs_pointer(sha256[entry.path], len(content))
        lfs = {"size": len(content), "sha256": sha256[entry.path], "pointer_size": len(pointer)}
        assert (entry.blob_id, entry.size, entry.lfs) == (git_blob_oid(pointer), len(content), lfs)
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert siblings["figures/plot.png"].lfs.sha256 == sha256["figures/plot.png"] and siblings["README.md"].lfs is None

    # A download is the object itself, cached under its sha256 (the X-Linked-Etag).
    seen = len(hub.requests)
    path = hf_hub_download(REPO, "figures/plot.png", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == LFS_FILES["figures/plot.png"]
    assert Path(path).resolve().name == sha256["figures/plot.png"]
    assert [(r.method, r.status) for r in hub.requests[seen:]] == [("HEAD", 200), ("GET", 200)]
    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    assert fs.read_block(f"{REPO}/model.safetensors", 6, 6) == b"but tr"

    # The same files again: the batch API answers no actions, nothing is uploaded, no commit is made.
    seen = len(hub.requests)
    assert api.upload_folder(folder_path=folder, repo_id=REPO).oid == first and hub.commits(REPO)[0] == first
    assert lfs_uploads(hub.requests[seen:]) == [] and not any(r.mutated for r in hub.requests[seen:])
    # Known content under a new path: committed as a pointer to the stored object, without an upload.
    seen = len(hub.requests)
    api.upload_file(path_or_fileobj=LFS_FILES["model.safetensors"], path_in_repo="copy.safetensors", repo_id=REPO)
    assert lfs_uploads(hub.requests[seen:]) == [] and len(hub.commits(REPO)) == 3
    assert hub.files(REPO)["copy.safetensors"] == LFS_FILES["model.safetensors"]


def test_lfs_batch_verify_and_commit_rules(api, hub):
    api.create_repo(REPO)
    stored, fresh = b"\0stored", b"\0fresh"
    api.upload_file(path_or_fileobj=stored, path_in_repo="stored.bin", repo_id=REPO)
    before = hub.commits(REPO)
    infos = [UploadInfo.from_bytes(stored), UploadInfo.from_bytes(fresh)]
    actions, errors, transfer = post_lfs_batch_info(infos, TOKEN, "model", REPO, "main", endpoint=hub.url)
    assert (errors, transfer) == ([], "basic")
    assert "actions" not in actions[0] and set(actions[1]["actions"]) == {"upload", "verify"}
    assert actions[0]["oid"] == hashlib.sha256(stored).hexdigest()

    oid = hashlib.sha256(fresh).hexdigest()
    objects = f"/{REPO}.git/info/lfs/objects"
    status, _ = request(hub, f"{objects}/batch", {"operation": "upload", "objects": []}, token=None)
    assert status == 401
    assert request(hub, f"{objects}/{'0' * 64}", method="PUT", data=b"x")[0] == 403  # no batch announced it
    assert request(hub, f"{objects}/{oid}", method="PUT", data=fresh)[0] == 200  # no token: a presigned URL
    assert request(hub, f"{objects}/verify", {"oid": oid, "size": len(fresh) + 1})[0] == 422  # wrong size
    assert request(hub, f"{objects}/verify", {"oid": "f" * 64, "size": len(fresh)})[0] == 404  # never uploaded
    # The wrong size dropped the upload: this oid is unusable until it is uploaded (and verified) again.
    assert request(hub, f"{objects}/verify", {"oid": oid, "size": len(fresh)})[0] == 404
    post_lfs_batch_info(infos[1:], TOKEN, "model", REPO, "main", endpoint=hub.url)
    assert request(hub, f"{objects}/{oid}", method="PUT", data=b"\0other")[0] == 200
    assert request(hub, f"{objects}/verify", {"oid": oid, "size": len(fresh)})[0] == 422  # wrong sha256

    header = {"key": "header", "value": {"summary": "pointer to nothing"}}
    line = {"key": "lfsFile", "value": {"path": "fresh.bin", "algo": "sha256", "oid": oid, "size": len(fresh)}}
    data = b"".join(json.dumps(item).encode() + b"\n" for item in (header, line))
    status, answer = request(hub, f"/api/models/{REPO}/commit/main", data=data)
    assert status == 400 and "LFS pointer pointed to a file that does not exist" in answer["error"]
    assert hub.commits(REPO) == before and "fresh.bin" not in hub.files(REPO)
    # Nor may another repo's commit point at this repo's objects.
    api.create_repo("test-org/other")
    line["value"] |= {"oid": actions[0]["oid"], "size": len(stored)}
    data = b"".join(json.dumps(item).encode() + b"\n" for item in (header, line))
    assert request(hub, "/api/models/test-org/other/commit/main", data=data)[0] == 400


def upload(content: bytes):
    return lambda api: api.upload_file(path_or_fileobj=content, path_in_repo="x", repo_id=REPO)


@pytest.mark.parametrize(
    ("method", "route", "body", "call", "raised"),
    [
        ("GET", "/api/collections", "html", lambda api: list(api.list_collections(owner="test-org")), JSONDecodeError),
        ("GET", "/api/collections", "keys", lambda api: list(api.list_collections(owner="test-org")), TypeError),
        ("GET", f"/api/models/{REPO}", "json", lambda api: api.model_info(REPO), JSONDecodeError),
        ("GET", f"/api/models/{REPO}", "keys", lambda api: api.model_info(REPO), KeyError),
        ("POST", "/preupload/", "keys", upload(b"x"), ValueError),
        ("POST", "/objects/batch", "keys", upload(b"\0"), ValueError),
        ("POST", "/commit/", "keys", upload(b"x"), KeyError),
        # A verify that never reached the Hub leaves the object unusable: the commit is refused.
        ("POST", "/objects/verify", "html", upload(b"\0"), BadRequestError),
    ],
)
def test_malformed_answers_and_what_the_client_raises(api, hub, method, route, body, call, raised):
    """The exceptions huggingface_hub raises on 200 answers it cannot read (sink_models.hub.publish.UNREADABLE)."""
    api.create_repo(REPO)
    hub.fail_always(status=200, route_contains=route, method=method, body=body)
    with pytest.raises(raised):
        call(api)
    assert any(r.status == 200 and route in r.path for r in hub.requests)
