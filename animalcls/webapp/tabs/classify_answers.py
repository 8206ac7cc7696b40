"""What the Classify tab says about one photo, computed without Gradio: which animals the models
know, each side's answer (one forward pass per model, with its none-of-the-five verdict and
Grad-CAM map), the small tag on a flagged side and the ONE warning with its scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.serving.inference import load_predictor
from animalcls.store.checkpoints import read_manifest
from animalcls.trust import verdicts as trust
from animalcls.webapp.views import side_title

NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


def known_classes_markdown(paths: dict[str, Path | None]) -> str:
    """What the Classify tab says above the photo: which animals the models (kind -> folder) know."""
    names: list[str] = []
    for kind in ("transfer", "scratch"):
        folder = paths.get(kind)
        try:
            names += [n for n in (read_manifest(folder)["class_names"] if folder else []) if n not in names]
        except AnimalclsError:
            continue
    if not names:
        return ""
    count = NUMBERS.get(len(names), str(len(names)))
    return (
        f"They know **{count} animals: {', '.join(names)}**. Shown anything else, they still pick one of "
        f"the {count}, so each photo is checked too, with a warning when it may show none of them."
    )


def answer_sides(folders: dict[str, Path], picture: Any, heatmaps: bool) -> dict[str, trust.Answer | str]:
    """Each side's answer for one photo (one forward pass per model), or why it failed. The
    transfer model answers first: its pooled features are the ImageNet ones scratch's detector needs."""
    judges: dict[str, trust.Judge | str] = {}
    for kind, folder in folders.items():  # the folders of one registry snapshot
        try:
            judges[kind] = trust.Judge(load_predictor(folder))
        except AnimalclsError as exc:
            judges[kind] = str(exc)
    ordered = sorted(judges, key=lambda k: not (isinstance(judges[k], trust.Judge) and judges[k].gives_imagenet))
    out: dict[str, trust.Answer | str] = {}
    imagenet = None
    for kind in ordered:
        judge = judges[kind]
        if isinstance(judge, str):
            out[kind] = judge
            continue
        try:
            if judge.needs_imagenet and imagenet is None:
                imagenet = trust.imagenet_features([picture])
            answers, pooled = judge.answer([picture], imagenet if judge.needs_imagenet else None, heatmaps)
        except AnimalclsError as exc:
            out[kind] = str(exc)
            continue
        out[kind] = answers[0]
        if judge.gives_imagenet and imagenet is None:
            imagenet = pooled
    return out


def untrusted_note(answer: trust.Answer | None) -> str:
    """Appended to a side's header: a small tag when its check flags the photo (the page dims that
    side's answer; the one warning above says why)."""
    if answer is None or answer.out_of_scope is None:
        return "\n\nThis model has no check for photos of other things." if answer else ""
    if answer.out_of_scope:
        return ' · <span class="side-flagged">⚠ a guess: not to be trusted</span>'
    return ""


def scope_thresholds(folders: Mapping[str, Path]) -> dict[str, float]:
    """kind -> the distance above which its none-of-the-five check warns (for the warning's details)."""
    out: dict[str, float] = {}
    for kind, folder in folders.items():
        try:
            detector, _ = trust.load_detector(folder, read_manifest(folder))
        except (AnimalclsError, OSError, ValueError):
            continue
        if detector is not None:
            out[kind] = float(detector.threshold)
    return out


def warning_markdown(
    answered: Mapping[str, trust.Answer], class_names: Sequence[str], limits: Mapping[str, float]
) -> str:
    """The ONE warning for a photo a model's check flags, with the scores behind a details toggle."""
    flagged = [k for k, a in answered.items() if a.out_of_scope]
    if not flagged:
        return ""
    count = NUMBERS.get(len(class_names), str(len(class_names)))
    who = "Both models" if len(flagged) == 2 else f"The {side_title(flagged[0]).lower()} model"
    scores = "".join(
        f"<li>{side_title(k)}: {a.scope_score:.2f}"
        + (f" (it warns above {limits[k]:.2f})" if k in limits else "")
        + (", flagged" if a.out_of_scope else "")
        + "</li>"
        for k, a in answered.items()
        if a.scope_score is not None
    )
    return (
        '<div class="scope-warning">\n\n'
        f"**⚠ This photo may show none of the {count} animals these models know** "
        f"({', '.join(class_names)}). {who} must still pick one, so the dimmed "
        f"answer{'s' if len(flagged) == 2 else ''} below {'are guesses' if len(flagged) == 2 else 'is a guess'}.\n\n"
        "<details><summary>Details</summary>Each model checks how far the photo is from the photos it was "
        f"trained on (a distance in its own features; higher is less alike):<ul>{scores}</ul></details>\n\n</div>"
    )
