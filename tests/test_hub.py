"""animalcls.store.hub against a real Hub cache layout built in tmp_path (no network, no mocked
snapshot_download) and a fake HfApi at the upload boundary."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import REPO, make_dataset

from animalcls.cli import main as cli
from animalcls.core.errors import CheckpointError, DataError, HubError
from animalcls.data import dataset as data
from animalcls.store import checkpoints, hub

# Files the Hub stores with Git LFS / Xet: their cache blob is named by the sha256 of the
# content; other files by their git blob sha1 (what huggingface_hub uses as the etag).
LFS_SUFFIXES = (".keras", ".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------- helpers


def _blob_name(rel: str, content: bytes) -> str:
    if rel.lower().endswith(LFS_SUFFIXES):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def cache_repo(
    cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model", ref: str = "main"
) -> tuple[Path, str]:
    """Write a repo into a Hub cache the way huggingface_hub does:
    `<type>s--ORG--NAME/{blobs/<hash>, snapshots/<commit>/<path> -> ../../blobs/<hash>, refs/<ref>}`."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    for rel, content in files.items():
        blob = folder / "blobs" / _blob_name(rel, content)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)  # no newline: huggingface_hub reads it verbatim
    return snapshot, commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {f"{prefix}{p.relative_to(folder).as_posix()}": p.read_bytes() for p in files}


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache under tmp_path, offline, no token.

    huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE into
    `huggingface_hub.constants` once, at import, and `is_offline_mode()` returns that constant:
    setting the env vars alone does nothing once it is imported, so both are patched (the env
    vars for subprocesses, the constants for this process).
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    settings = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": True,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in settings.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv(hub.HUB_REPO_ENV, raising=False)
    return cache


def go_online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Leave offline mode but send every request to `endpoint` (a local port): no real traffic."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_checkpoint_repo(hub_env: Path, tiny_checkpoints: dict[str, Path]) -> tuple[str, Path]:
    files = {}
    for _kind, folder in tiny_checkpoints.items():
        files.update(folder_files(folder, f"{folder.name}/"))
    files["README.md"] = b"# two tiny checkpoints\n"
    snapshot, _ = cache_repo(hub_env, "org/animalcls-tiny", files)
    return "org/animalcls-tiny", snapshot


# ---------------------------------------------------------------- the cache layout itself


def test_cache_helper_writes_the_layout_huggingface_hub_scans(hub_env: Path) -> None:
    from huggingface_hub import scan_cache_dir

    cache_repo(hub_env, "org/x", {"manifest.json": b"{}", "model.keras": b"PK"})
    report = scan_cache_dir(hub_env)
    assert report.warnings == []
    (repo,) = report.repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == ("org/x", "model", 2)
    assert {ref for revision in repo.revisions for ref in revision.refs} == {"main"}


# ---------------------------------------------------------------- download_checkpoints


def test_download_finds_and_validates_checkpoint_subfolders(two_checkpoint_repo: tuple[str, Path]) -> None:
    repo_id, snapshot = two_checkpoint_repo
    folders = hub.download_checkpoints(repo_id)
    assert folders == [snapshot / "scratch-tiny", snapshot / "transfer-tiny"]
    assert [checkpoints.read_manifest(f)["kind"] for f in folders] == ["scratch", "transfer"]


def test_download_repo_root_checkpoint_and_commit_revision(hub_env: Path, tiny_checkpoints: dict[str, Path]) -> None:
    snapshot, commit = cache_repo(hub_env, "org/one", folder_files(tiny_checkpoints["transfer"]))
    assert hub.download_checkpoints("org/one") == [snapshot]
    assert hub.download_checkpoints("org/one", revision=commit) == [snapshot]


def test_download_copies_atomically_to_out_dir(two_checkpoint_repo: tuple[str, Path], tmp_path: Path) -> None:
    repo_id, snapshot = two_checkpoint_repo
    out = tmp_path / "out"
    for _ in range(2):  # the second run refreshes the existing folders
        folders = hub.download_checkpoints(repo_id, out_dir=out)
    assert folders == [out / "scratch-tiny", out / "transfer-tiny"]
    assert sorted(p.name for p in out.iterdir()) == ["scratch-tiny", "transfer-tiny"]  # no temp leftovers
    copied = out / "transfer-tiny" / checkpoints.MODEL_FILE
    assert not copied.is_symlink() and copied.read_bytes() == (snapshot / "transfer-tiny" / "model.keras").read_bytes()
    checkpoints.load_checkpoint(out / "transfer-tiny")


def test_download_refuses_to_replace_a_non_checkpoint_folder(
    two_checkpoint_repo: tuple[str, Path], tmp_path: Path
) -> None:
    repo_id, _ = two_checkpoint_repo
    (tmp_path / "out" / "scratch-tiny").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        hub.download_checkpoints(repo_id, out_dir=tmp_path / "out")


def test_corrupt_model_in_the_cache_raises_checkpoint_error(
    hub_env: Path, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    files = folder_files(tiny_checkpoints["scratch"], "scratch-tiny/")
    files["scratch-tiny/model.keras"] = files["scratch-tiny/model.keras"][:2000]  # an interrupted upload
    cache_repo(hub_env, "org/broken", files)
    with pytest.raises(CheckpointError, match=r"org/broken, folder 'scratch-tiny'.*model\.keras"):
        hub.download_checkpoints("org/broken", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing copied when validation fails


def test_repo_without_checkpoints_is_reported(hub_env: Path) -> None:
    cache_repo(hub_env, "org/empty", {"README.md": b"hello"})
    with pytest.raises(CheckpointError, match="holds no checkpoint folder"):
        hub.download_checkpoints("org/empty")


# ---------------------------------------------------------------- offline and unreachable Hub


def test_offline_and_not_cached_fails_fast_with_one_line(hub_env: Path) -> None:
    start = time.monotonic()
    with pytest.raises(HubError) as caught:
        hub.download_checkpoints("x/y")
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Could not download the model repo x/y (HF_HUB_OFFLINE is set")
    assert "`hf download x/y`" in message and "HF_HOME" in message


def test_unreachable_endpoint_fails_fast(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go_online(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(HubError, match=r"could not reach the Hugging Face Hub at http://127\.0\.0\.1.*ConnectError"):
        hub.download_checkpoints("x/y")
    assert time.monotonic() - start < 10


def test_silent_endpoint_is_bounded_by_the_timeout(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: huggingface_hub's repo_info has no
    timeout of its own, so without hub's bound this would hang forever."""
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
    try:
        go_online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)  # as if the user set it
        start = time.monotonic()
        with pytest.raises(HubError, match="ReadTimeout"):
            hub.download_checkpoints("x/y")
        # 1 s bound + at most 3 s for the library's one-off agent-registry request (its own timeout)
        assert time.monotonic() - start < 10
    finally:
        server.close()


def test_fill_timeout_keeps_timeouts_that_are_set() -> None:
    request = SimpleNamespace(
        method="GET", extensions={"timeout": {"connect": 2.5, "read": None, "write": None, "pool": None}}
    )
    hub._fill_timeout(request)
    assert request.extensions["timeout"]["connect"] == 2.5
    assert None not in request.extensions["timeout"].values()


def test_cli_download_offline_prints_one_error_line(hub_env: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # logs.filter_stderr's pump thread can drop the last stderr line at exit: keep fd 2 direct.
        "ANIMALCLS_FILTER_STDERR": "0",
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "animalcls", "download", "--repo-id", "x/y"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "x/y" in errors[0] and "HF_HUB_OFFLINE" in errors[0], result.stderr
    assert result.stdout == ""
    assert elapsed < 60  # mostly the CLI importing TensorFlow; the Hub part takes < 1 s


# ---------------------------------------------------------------- the app's startup pull


def test_pull_app_checkpoints_maps_kinds(
    two_checkpoint_repo: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id, snapshot = two_checkpoint_repo
    assert hub.pull_app_checkpoints() == ({}, None)  # ANIMALCLS_HUB_REPO unset
    monkeypatch.setenv(hub.HUB_REPO_ENV, repo_id)
    mapping, message = hub.pull_app_checkpoints()
    assert message is None
    assert mapping == {"scratch": snapshot / "scratch-tiny", "transfer": snapshot / "transfer-tiny"}


def test_pull_app_checkpoints_falls_back_with_a_message(hub_env: Path) -> None:
    mapping, message = hub.pull_app_checkpoints("org/not-cached")
    assert mapping == {}
    assert message == (
        f"Could not load checkpoints from the Hub repo org/not-cached (HF_HUB_OFFLINE is set and it is not in the "
        f"Hub cache {hub_env}); using the bundled checkpoints."
    )


def test_pull_app_checkpoints_falls_back_on_a_corrupt_model(hub_env: Path, tiny_checkpoints: dict[str, Path]) -> None:
    files = folder_files(tiny_checkpoints["transfer"])
    files["model.keras"] = b"not a zip"
    cache_repo(hub_env, "org/bad", files)
    mapping, message = hub.pull_app_checkpoints("org/bad")
    assert mapping == {} and "Corrupt model.keras" in message and message.endswith("using the bundled checkpoints.")


# ---------------------------------------------------------------- hf:// datasets


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("hf://datasets/org/animals", ("org/animals", None, "")),
        ("hf://datasets/org/animals/", ("org/animals", None, "")),
        ("hf://datasets/org/animals@v1.0/raw-img", ("org/animals", "v1.0", "raw-img")),
        ("hf://datasets/org/my.set_2/a/b", ("org/my.set_2", None, "a/b")),
    ],
)
def test_parse_data_spec(spec: str, expected: tuple[str, str | None, str]) -> None:
    assert hub.parse_data_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["hf://org/animals", "hf://models/org/x", "hf://datasets/org", "hf://datasets/org/x/../y", "datasets/o/x"]
)
def test_bad_data_spec_says_the_expected_form(spec: str) -> None:
    with pytest.raises(ValueError, match=r"hf://datasets/ORG/NAME\[@REVISION\]\[/SUBDIR\]|inside the repo"):
        hub.parse_data_spec(spec)


@pytest.mark.slow
def test_resolve_data_and_train_on_an_hf_dataset(
    hub_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_dataset(tmp_path / "src", per_class=10)
    snapshot, _ = cache_repo(hub_env, "org/animals", folder_files(source), repo_type="dataset")

    folder = hub.resolve_data("hf://datasets/org/animals/raw-img")
    assert folder == snapshot / "raw-img"
    assert data.scan_folder(folder).counts() == {name: 10 for name in data.resolve_classes(None)}
    with pytest.raises(DataError, match="has no folder 'nope'"):
        hub.resolve_data("hf://datasets/org/animals/nope")
    with pytest.raises(HubError, match=r"`hf download org/other --repo-type dataset --revision v2`"):
        hub.resolve_data("hf://datasets/org/other@v2")

    monkeypatch.setenv("ANIMALCLS_FILTER_STDERR", "0")  # keep pytest's fd 2 capture intact
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--data",
            "hf://datasets/org/animals",
            "--model",
            "scratch",
            "--backbone",
            "tiny",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = checkpoints.read_manifest(out)
    assert manifest["dataset"]["class_folders"]["cat"] == "gatto"
    assert manifest["dataset"]["hub_dataset"] == "org/animals" and "root" not in manifest["dataset"]
    assert "Checkpoint:" in capsys.readouterr().out


# ---------------------------------------------------------------- push and the model card


def split_card(card: str) -> tuple[dict[str, Any], str]:
    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_model_card_metadata_and_body(tiny_checkpoints: dict[str, Path]) -> None:
    from huggingface_hub import ModelCard

    folder = tiny_checkpoints["transfer"]
    evaluation = checkpoints.read_json(folder / checkpoints.EVAL_FILE)
    card = hub.model_card(folder, repo_id="me/animalcls-test")
    meta, body = split_card(card)
    assert meta["library_name"] == "keras" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-classification" and meta["metrics"] == ["accuracy"]
    assert meta["tags"] == ["image-classification", "keras", "animalcls", "tiny", "transfer"]
    (result,) = ModelCard(card).data.eval_results  # the Hub's own parser reads the model-index back
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == pytest.approx(evaluation["accuracy"], abs=1e-4)
    assert f"**accuracy {evaluation['accuracy']:.4f}**" in body
    assert f"| *weighted avg* | {evaluation['report']['weighted avg']['precision']:.4f} |" in body
    assert "![confusion matrix](confusion_matrix.png)" in body
    classes = body.split("## Classes (output order)")[1].split("##")[0]
    assert [line.split("`")[1] for line in classes.splitlines() if "`" in line] == evaluation["class_names"]
    assert "| batch_size | 8 |" in body and "dog" in body and "safety-critical" in body


class FakeApi:
    """Records what push_checkpoint hands to the Hub; reads the uploaded folder while it exists."""

    calls: list[tuple[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FakeApi.calls.append(("HfApi", kwargs))

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: Path, **kwargs: Any) -> Any:
        files = folder_files(Path(folder_path))
        FakeApi.calls.append(("upload_folder", {"repo_id": repo_id, "files": files, **kwargs}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc")


@pytest.fixture
def fake_api(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_uploads_folder_and_card_in_one_commit(
    fake_api: type[FakeApi], tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    folder = tiny_checkpoints["scratch"]
    summary = hub.push_checkpoint(folder, "me/animalcls-test", private=True)
    assert summary.endswith("to me/animalcls-test: https://huggingface.co/me/animalcls-test/commit/0123abc")
    assert "\n" not in summary
    names = [name for name, _ in fake_api.calls]
    assert names == ["HfApi", "create_repo", "upload_folder"]
    create, upload = fake_api.calls[1][1], fake_api.calls[2][1]
    assert create == {"repo_id": "me/animalcls-test", "repo_type": "model", "private": True, "exist_ok": True}
    files = upload["files"]
    assert {k: v for k, v in files.items() if k != "README.md"} == folder_files(folder)
    meta, body = split_card(files["README.md"].decode())
    accuracy = checkpoints.read_json(folder / checkpoints.EVAL_FILE)["accuracy"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(accuracy, abs=1e-4)
    assert f"**accuracy {accuracy:.4f}**" in body and "![confusion matrix](confusion_matrix.png)" in body
    assert all(f"`{name}`" in body for name in checkpoints.read_manifest(folder)["class_names"])
    assert "scratch-tiny" in upload["commit_message"]


def test_push_dry_run_sends_nothing(
    fake_api: type[FakeApi],
    tiny_checkpoints: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ANIMALCLS_FILTER_STDERR", "0")
    folder = tiny_checkpoints["transfer"]
    assert cli.main(["push", str(folder), "--repo-id", "me/animalcls-test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert fake_api.calls == []
    for name, _size in hub._upload_files(folder):
        assert name in out
    assert "README.md" in out and "(generated model card, below)" in out
    assert "model-index:" in out and "![confusion matrix](confusion_matrix.png)" in out
    assert out.rstrip().endswith("Nothing was sent (dry run).")


def test_push_without_token_fails_before_any_request(
    fake_api: type[FakeApi], tiny_checkpoints: dict[str, Path]
) -> None:
    with pytest.raises(HubError, match="no Hugging Face token.*HF_TOKEN"):
        hub.push_checkpoint(tiny_checkpoints["scratch"], "me/x")
    assert fake_api.calls == []


def test_push_maps_auth_errors(
    fake_api: type[FakeApi], tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self: FakeApi, repo_id: str, **kwargs: Any) -> None:
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden: you don't have the rights", response=response)

    monkeypatch.setenv("HF_TOKEN", "hf_read_only")
    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    with pytest.raises(
        HubError,
        match=r"Could not upload to the model repo me/x \(HTTP 403: not authorised\)\. "
        r"Set HF_TOKEN to a write token",
    ):
        hub.push_checkpoint(tiny_checkpoints["scratch"], "me/x")


def test_push_rejects_a_broken_folder(
    fake_api: type[FakeApi], tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoints["scratch"], broken)
    (broken / "model.keras").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="Corrupt model.keras"):
        hub.push_checkpoint(broken, "me/x", dry_run=True)
    with pytest.raises(CheckpointError, match="Checkpoint folder not found"):
        hub.push_checkpoint(tmp_path / "missing", "me/x", dry_run=True)


def test_import_animalcls_does_not_import_huggingface_hub() -> None:
    code = "import sys, animalcls, animalcls.store.hub; print('huggingface_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
