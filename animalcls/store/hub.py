"""Hugging Face Hub I/O: download and push checkpoint folders, hf:// datasets, the app's startup
pull, repo-id checks, bounded HTTP timeouts and one-line errors (the model card: model_card.py).
The only module that imports huggingface_hub, and only inside functions. Downloads go through the Hub cache
(HF_HOME / HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE are honoured as huggingface_hub reads
them) and every failure becomes a one-line `HubError` that says what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from animalcls.core.atomic import atomic_dir
from animalcls.core.errors import CheckpointError, DataError, HubError
from animalcls.core.settings import HUB_REPO_ENV
from animalcls.store import checkpoints
from animalcls.store.model_card import model_card

# Used when neither the library nor the user (HF_HUB_DOWNLOAD_TIMEOUT) bounds a request:
# huggingface_hub's repo_info/list_repo_tree/commit calls are sent with no timeout at all.
DEFAULT_TIMEOUT_S = 10.0
# A commit or an upload part may keep the server busy for a while before it answers.
UPLOAD_READ_TIMEOUT_S = 120.0
DATA_SPEC_FORM = "hf://datasets/ORG/NAME[@REVISION][/SUBDIR]"
_DATA_SPEC = re.compile(r"^hf://datasets/(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/@]+))?(?P<subdir>(?:/[^/]+)*)/?$")
_timeouts_installed = False
_timeouts_lock = threading.Lock()


# ---------------------------------------------------------------- public API


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a Hub repo id (ORG/NAME or NAME: no spaces, no '..', no path), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return str(exc)
    return None


def download_checkpoints(repo_id: str, revision: str | None = None, out_dir: Path | None = None) -> list[Path]:
    """Download a Hub model repo through the Hub cache, validate its checkpoint folders and
    return them: the repo root when it holds manifest.json, else its top-level folders that do.

    Every folder is loaded (Keras safe_mode) before anything is copied; a corrupt one raises
    `CheckpointError` naming it. With `out_dir`, each folder is copied to `out_dir/<name>`
    atomically (an existing checkpoint folder of that name is replaced: it is a refresh).
    """
    snapshot = _snapshot(repo_id, "model", revision)
    folders = _checkpoint_folders(snapshot, repo_id)
    for folder in folders:
        _validate(folder, snapshot, repo_id)
    if out_dir is None:
        return folders
    name = repo_id.split("/")[-1]
    return [_copy_atomic(f, Path(out_dir).expanduser() / (name if f == snapshot else f.name)) for f in folders]


def push_checkpoint(checkpoint_dir: Path, repo_id: str, private: bool = False, dry_run: bool = False) -> str:
    """Upload a checkpoint folder plus a generated README.md model card to a Hub model repo
    in one commit, and return a one-line summary with the commit URL.

    With `dry_run` nothing is sent: the text lists the files and sizes and holds the full card.
    The upload is `upload_folder` of a temporary copy (hard links where possible) holding the
    checkpoint's files and the card, so the repo gets one commit and the source folder is
    never written to.
    """
    folder = Path(checkpoint_dir).expanduser()
    manifest = checkpoints.read_manifest(folder)
    checkpoints.check_model_archive(folder)
    card = model_card(folder, repo_id=repo_id)
    files = _upload_files(folder)
    if dry_run:
        return _dry_run_text(repo_id, private, files, card)
    return _upload(folder, repo_id, private, files, card, manifest)


def resolve_data(spec: str) -> Path:
    """Download `hf://datasets/ORG/NAME[@REVISION][/SUBDIR]` through the Hub cache and return
    the local folder (SUBDIR applied) for `data.scan_folder`. REVISION is a branch, tag or
    commit (default: main); with SUBDIR only the files under it are downloaded."""
    repo_id, revision, subdir = parse_data_spec(spec)
    patterns = [f"{subdir}/*"] if subdir else None
    snapshot = _snapshot(repo_id, "dataset", revision, allow_patterns=patterns)
    folder = snapshot / subdir if subdir else snapshot
    if not folder.is_dir():
        raise DataError(f"The dataset repo {repo_id} has no folder '{subdir}' ({spec}).")
    return folder


def parse_data_spec(spec: str) -> tuple[str, str | None, str]:
    """Split an hf:// dataset spec into (repo_id, revision or None, subdir or "")."""
    match = _DATA_SPEC.match(spec.strip())
    if not match:
        raise ValueError(
            f"Bad dataset spec '{spec}': expected {DATA_SPEC_FORM}, e.g. hf://datasets/me/animals10/raw-img "
            "or hf://datasets/me/animals10@v1."
        )
    subdir = match["subdir"].strip("/")
    if any(part in (".", "..") for part in subdir.split("/")):
        raise ValueError(f"Bad dataset spec '{spec}': SUBDIR must stay inside the repo (no '.' or '..').")
    return match["repo"], match["revision"], subdir


def pull_app_checkpoints(repo_id: str | None = None) -> tuple[dict[str, Path], str | None]:
    """For the app at startup: the checkpoint to use per kind from a Hub repo, or a message.

    `repo_id` defaults to $ANIMALCLS_HUB_REPO (ORG/NAME, optionally ORG/NAME@REVISION); unset
    gives `({}, None)`. Per kind, `defaults.json` at the repo root picks the folder, else the
    newest one. Only the picked folders are validated. Any failure gives `({}, message)`:
    the app then uses its bundled checkpoints and shows the message.
    """
    spec = (repo_id or os.environ.get(HUB_REPO_ENV, "")).strip()
    if not spec:
        return {}, None
    repo_id, _, revision = spec.partition("@")
    try:
        snapshot = _snapshot(repo_id, "model", revision or None)
        pair = _pick_per_kind(snapshot, repo_id)
        for folder in pair.values():
            _validate(folder, snapshot, repo_id)
        return pair, None
    except Exception as exc:  # noqa: BLE001 - the app must start on its bundled models whatever happened
        reason = getattr(exc, "reason", None) or _one_line(exc)
        return {}, f"Could not load checkpoints from the Hub repo {spec} ({reason}); using the bundled checkpoints."


# ---------------------------------------------------------------- download helpers


def _snapshot(repo_id: str, repo_type: str, revision: str | None, allow_patterns: list[str] | None = None) -> Path:
    """snapshot_download into the Hub cache, with bounded timeouts and friendly errors."""
    from huggingface_hub import snapshot_download

    _bound_timeouts()
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns))
    except Exception as exc:  # noqa: BLE001 - converted below, or re-raised when it is not a Hub failure
        _raise_as_hub_error(exc, f"download the {repo_type} repo {repo_id}", repo_id, repo_type, revision)
        raise


def _checkpoint_folders(snapshot: Path, repo_id: str) -> list[Path]:
    if (snapshot / checkpoints.MANIFEST_FILE).is_file():
        return [snapshot]
    folders = checkpoints.find_checkpoints(snapshot)
    if not folders:
        raise CheckpointError(
            f"The Hub repo {repo_id} holds no checkpoint folder "
            "(no manifest.json at its root or in a top-level folder)."
        )
    return folders


def _pick_per_kind(snapshot: Path, repo_id: str) -> dict[str, Path]:
    folders = _checkpoint_folders(snapshot, repo_id)
    if folders == [snapshot]:
        return {checkpoints.read_manifest(snapshot)["kind"]: snapshot}
    pair = checkpoints.default_pair(snapshot)
    if not pair:
        raise CheckpointError(f"The Hub repo {repo_id} has no valid scratch or transfer checkpoint.")
    return pair


def _validate(folder: Path, snapshot: Path, repo_id: str) -> None:
    """Load the checkpoint (model included, safe_mode); name the repo folder when it fails."""
    try:
        checkpoints.load_checkpoint(folder)
    except CheckpointError as exc:
        where = "its root" if folder == snapshot else f"folder '{folder.relative_to(snapshot).as_posix()}'"
        raise CheckpointError(f"Hub repo {repo_id}, {where}: {exc}") from None


def _copy_atomic(source: Path, target: Path) -> Path:
    """Copy a checkpoint folder (following the cache's symlinks) to a temp sibling, then
    rename it into place, so `target` is never half-written."""
    if target.exists() and not (target / checkpoints.MANIFEST_FILE).is_file():
        raise CheckpointError(f"{target} exists and is not a checkpoint folder: choose another --out.")
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    return target


# ---------------------------------------------------------------- timeouts and errors


def _bound_timeouts() -> None:
    """Make huggingface_hub's shared HTTP client fill in a finite timeout (HF_HUB_DOWNLOAD_TIMEOUT,
    else 10 s) wherever a request has none, so an unreachable Hub fails in seconds instead of
    hanging. Timeouts the library sets, and a client factory the user installed, are left alone."""
    global _timeouts_installed
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    with _timeouts_lock:
        if _timeouts_installed:
            return
        _timeouts_installed = True
        default = getattr(_http, "default_client_factory", None)
        if default is None or getattr(_http, "_GLOBAL_CLIENT_FACTORY", default) is not default:
            return
        set_client_factory(_bounded_factory(default))


def _bounded_factory(default: Callable[[], Any]) -> Callable[[], Any]:
    """huggingface_hub's own client (offline check, redirects...) plus the timeout hook."""

    def factory() -> Any:
        client = default()
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], _fill_timeout]}
        return client

    return factory


def _fill_timeout(request: Any) -> None:
    """httpx request hook: replace unbounded (None) timeouts by the bound."""
    from huggingface_hub import constants

    bound = float(constants.HF_HUB_DOWNLOAD_TIMEOUT or DEFAULT_TIMEOUT_S)
    slow = bound if request.method in ("GET", "HEAD") else max(bound, UPLOAD_READ_TIMEOUT_S)
    timeout = dict(request.extensions.get("timeout") or {})
    wanted = {"connect": bound, "pool": bound, "read": slow, "write": slow}
    filled = {key: value for key, value in wanted.items() if timeout.get(key) is None}
    if filled:
        request.extensions = {**request.extensions, "timeout": {**timeout, **filled}}


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP library huggingface_hub uses (httpx2 in 2.x)."""
    types: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        types += [module.TransportError]  # ConnectError, timeouts, proxy and protocol errors
    return tuple(types)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _raise_as_hub_error(
    exc: BaseException, action: str, repo_id: str, repo_type: str, revision: str | None = None, write: bool = False
) -> None:
    """Raise a HubError with a one-line 'Could not ACTION (why). What to do.' message and a
    short `.reason`; return (the caller re-raises) when `exc` is not a Hub failure (a full disk...)."""
    described = _describe(exc, repo_id, repo_type, revision, write)
    if described is None:
        return
    reason, advice = described[0].rstrip("."), described[1]
    error = HubError(f"Could not {action} ({reason}). {advice}")
    error.reason = reason  # type: ignore[attr-defined] - the app's fallback message uses it
    raise error from exc


def _describe(
    exc: BaseException, repo_id: str, repo_type: str, revision: str | None, write: bool
) -> tuple[str, str] | None:
    from huggingface_hub import constants, errors

    chain = _chain(exc)
    kinds = tuple(type(e) for e in chain)
    flag = (" --repo-type dataset" if repo_type == "dataset" else "") + (f" --revision {revision}" if revision else "")
    fetch = f"`hf download {repo_id}{flag}`"
    token = "a write token" if write else "a token with read access"
    login = f"set HF_TOKEN to {token} (or run `hf auth login`)"
    offline = any(issubclass(k, errors.OfflineModeIsEnabled) for k in kinds) or (
        isinstance(exc, errors.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
    )
    network = next((e for e in chain if isinstance(e, _network_errors())), None)
    if write and (offline or network is not None):
        why = "HF_HUB_OFFLINE is set" if offline else f"could not reach the Hub at {constants.ENDPOINT}"
        cause = "" if offline else f": {_one_line(network, 120)}"
        return why + cause, "Unset HF_HUB_OFFLINE, connect to the internet and run it again (check HF_ENDPOINT, proxy)."
    if isinstance(exc, errors.IncompleteSnapshotError):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        return f"{why} and the cached copy is incomplete", f"Complete the cache with {fetch} on a connected machine."
    if offline:
        return (
            f"HF_HUB_OFFLINE is set and {f'revision {revision} of ' if revision else ''}it is not in the Hub cache "
            f"{constants.HF_HUB_CACHE}",
            f"Unset HF_HUB_OFFLINE to download it, or set HF_HOME to a cache that has it "
            f"(pre-download it with {fetch}).",
        )
    if network is not None or isinstance(exc, errors.LocalEntryNotFoundError):
        cause = _one_line(network or exc, 120)
        return (
            f"offline? could not reach the Hugging Face Hub at {constants.ENDPOINT}: {cause}",
            f"Connect to the internet, or pre-download it with {fetch} / set HF_HOME to a cache that has it, "
            "or check HF_ENDPOINT and proxy settings.",
        )
    if isinstance(exc, errors.GatedRepoError):
        return "the repo is gated", f"Accept its terms on {_repo_url(repo_id, repo_type)} and {login}."
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "repo not found, or private", f"Check the name ORG/NAME; for a private repo {login}."
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"revision '{revision}' not found", "Use a branch, tag or commit that exists in the repo."
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return f"HTTP {status}: not authorised", f"{login[0].upper()}{login[1:]}."
        return f"HTTP {status}: {_one_line(exc, 160)}", "Try again later (https://status.huggingface.co)."
    if isinstance(exc, errors.HFValidationError):
        return _one_line(exc, 160), "Repo ids look like ORG/NAME."
    return None


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}" if isinstance(exc, _network_errors()) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _repo_url(repo_id: str, repo_type: str = "model") -> str:
    from huggingface_hub import constants

    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{constants.ENDPOINT}/{prefix}{repo_id}"


# ---------------------------------------------------------------- push helpers


def _upload_files(folder: Path) -> list[tuple[str, int]]:
    """(path in repo, size) of the files to upload; hidden files and an old README.md (the
    generated card replaces it) are left out."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts) and rel.as_posix() != "README.md":
            files.append((rel.as_posix(), path.stat().st_size))
    return files


def _dry_run_text(repo_id: str, private: bool, files: list[tuple[str, int]], card: str) -> str:
    card_size = len(card.encode())
    width = max(len(name) for name, _ in [*files, ("README.md", 0)])
    total = sum(size for _, size in files) + card_size
    return "\n".join(
        [
            f"Dry run: would create the {'private' if private else 'public'} model repo {repo_id} if missing "
            f"and upload {len(files) + 1} files ({_size(total)}) in one commit:",
            *(f"  {name:<{width}}  {_size(size):>9}" for name, size in files),
            f"  {'README.md':<{width}}  {_size(card_size):>9}  (generated model card, below)",
            "",
            "----- README.md -----",
            card.rstrip(),
            "----- end of README.md -----",
            "Nothing was sent (dry run).",
        ]
    )


def _upload(
    folder: Path, repo_id: str, private: bool, files: list[tuple[str, int]], card: str, manifest: dict[str, Any]
) -> str:
    import huggingface_hub

    if huggingface_hub.get_token() is None:
        raise HubError(
            f"Could not upload to the model repo {repo_id} (no Hugging Face token). "
            "Set HF_TOKEN to a write token (or run `hf auth login`)."
        )
    _bound_timeouts()
    total = sum(size for _, size in files) + len(card.encode())
    with tempfile.TemporaryDirectory(prefix="animalcls-push-") as staging:
        staged = Path(staging)
        for name, _ in files:
            _link_or_copy(folder / name, staged / name)
        (staged / "README.md").write_text(card, encoding="utf-8")
        try:
            api = huggingface_hub.HfApi()
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, repo_type="model", folder_path=staged, commit_message=_commit_message(manifest)
            )
        except Exception as exc:  # noqa: BLE001 - converted, or re-raised when it is not a Hub failure
            _raise_as_hub_error(exc, f"upload to the model repo {repo_id}", repo_id, "model", write=True)
            raise
    url = getattr(commit, "commit_url", None) or str(commit)
    return f"Uploaded {manifest['name']} ({len(files) + 1} files, {_size(total)}) to {repo_id}: {url}"


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when on the same file system (no copy of a large model), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _commit_message(manifest: dict[str, Any]) -> str:
    from animalcls import __version__

    return f"Upload {manifest['name']} ({manifest['kind']}, {manifest['backbone']}) with animalcls {__version__}"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
