"""Which checkpoint folder each side of the app serves: explicit folders first, then the Hub
(ANIMALCLS_HUB_REPO), then the bundled defaults; with the notices the page shows about them.

Imports neither Gradio nor TensorFlow, so `python app.py` can resolve the checkpoints and start
loading the models while Gradio is still being imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from animalcls.core.errors import AnimalclsError
from animalcls.store.checkpoints import KINDS, default_pair, read_manifest


@dataclass(frozen=True)
class ServedCheckpoints:
    """kind -> the folder that side serves (None: the side is empty), and why, in plain words."""

    paths: dict[str, Path | None]
    notices: list[str] = field(default_factory=list)


def resolve_checkpoints(
    scratch_dir: str | Path | None,
    transfer_dir: str | Path | None,
    checkpoints_root: Path,
    use_hub: bool,
    hub_repo: str | None,
) -> ServedCheckpoints:
    """Explicit folders first, then the Hub (ANIMALCLS_HUB_REPO), then the bundled defaults."""
    paths: dict[str, Path | None] = {"scratch": None, "transfer": None}
    notices: list[str] = []
    given = {"scratch": scratch_dir, "transfer": transfer_dir}
    for kind, folder in given.items():
        if folder is not None:
            paths[kind], notice = _given_side(kind, Path(folder))
            notices += [notice] if notice else []
    missing = [kind for kind in KINDS if given[kind] is None]
    if missing and use_hub:
        pulled, error = _pull_from_hub(hub_repo)
        if error:
            notices.append(error)
        for kind in missing:
            if pulled.get(kind):
                paths[kind] = Path(pulled[kind])
    if any(paths[kind] is None for kind in missing):
        try:
            bundled = default_pair(checkpoints_root)
        except AnimalclsError as exc:
            notices.append(f"Could not read the bundled checkpoints in {checkpoints_root}: {exc}")
            bundled = {}
        for kind in missing:
            if paths[kind] is None and bundled.get(kind):
                paths[kind] = bundled[kind]
    for kind in missing:
        if paths[kind] is None:
            notices.append(
                f"No {kind} checkpoint found (looked in {checkpoints_root.name}/): the {kind} side is empty."
            )
    return ServedCheckpoints(paths, notices)


def _given_side(kind: str, folder: Path) -> tuple[Path | None, str | None]:
    """A checkpoint folder given for one side: (folder, None), (folder, a note when it is of the
    other kind), or (None, why it cannot be used)."""
    try:
        recorded = read_manifest(folder)["kind"]
    except AnimalclsError as exc:
        return None, f"The {kind} checkpoint given cannot be used, so the {kind} side is empty: {exc}"
    if recorded != kind:
        return folder, f"{folder} is a {recorded} checkpoint, shown on the {kind} side as asked."
    return folder, None


def _pull_from_hub(repo_id: str | None) -> tuple[dict[str, Path], str | None]:
    """({kind: folder}, None), ({}, None) when no repo is configured, or ({}, message)."""
    from animalcls.store.hub import pull_app_checkpoints

    try:
        return pull_app_checkpoints(repo_id)
    except AnimalclsError as exc:
        return {}, str(exc)
