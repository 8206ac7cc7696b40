"""What transfer learning buys, at a glance: the bundled pair side by side in plain words, from
checkpoints/lesson.json (written by scripts/lesson_figures.py). Gradio-free: the layout shows the
Markdown and the chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LESSON_FILE = "lesson.json"
KINDS = ("scratch", "transfer")
HEADINGS = {"scratch": "Trained from scratch", "transfer": "Transfer learning (ImageNet)"}
# (key in lesson.json, what a learner reads)
ACCURACY_ROWS = (
    ("test_accuracy", "Test photos, from the same sources as the training photos"),
    ("cross_source_accuracy", "Photos of the same animals from other sources"),
    ("blur_accuracy", "Blurred photos"),
    ("downscale_accuracy", "Tiny photos (48 px, scaled back up)"),
    ("jpeg_accuracy", "Heavily compressed photos (JPEG quality 10)"),
)
LEARNED_ENOUGH = 0.75  # a new animal counts as learned once three photos in four are recognised


def load_lesson(checkpoints_dir: Path) -> dict[str, Any] | None:
    """The figures of both bundled models, or None when the file is missing or unreadable."""
    try:
        lesson = json.loads((Path(checkpoints_dir) / LESSON_FILE).read_text())
    except (OSError, ValueError):
        return None
    return lesson if all(isinstance(lesson.get(kind), dict) for kind in KINDS) else None


def lesson_for(served: dict[str, Path | None], checkpoints_dir: Path) -> dict[str, Any] | None:
    """The lesson when the app serves the very pair it was measured on (same names and test
    accuracy), else None: figures of other models would mislead."""
    lesson = load_lesson(checkpoints_dir)
    if lesson is None:
        return None
    for kind in KINDS:
        folder = served.get(kind)
        try:
            accuracy = json.loads((Path(folder) / "eval.json").read_text())["accuracy"] if folder else None
        except (OSError, ValueError, KeyError):
            return None
        if folder is None or Path(folder).name != lesson[kind]["name"] or accuracy != lesson[kind]["test_accuracy"]:
            return None
    return lesson


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def photos_to_learn(curve: dict[str, dict[str, float]] | None) -> str:
    """Fewest photos after which the new animal is recognised at least three times in four."""
    if not curve:
        return "–"
    shots = sorted(curve, key=int)
    for shots_count in shots:
        if curve[shots_count]["dog"] >= LEARNED_ENOUGH:
            return f"{shots_count} photos"
    best = max(curve[s]["dog"] for s in shots)
    return f"more than {shots[-1]} (at best {_percent(best)})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} million" if count >= 1e6 else f"{count / 1e3:.0f} thousand"


def lesson_rows(lesson: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, scratch, transfer) rows in plain words."""
    scratch, transfer = lesson["scratch"], lesson["transfer"]
    rows = [(label, _percent(scratch.get(key)), _percent(transfer.get(key))) for key, label in ACCURACY_ROWS]
    animal = (lesson.get("few_shot_setup") or {}).get("new_class", "a new animal")
    rows.append(
        (
            f"Photos needed to learn {animal} (recognised 3 times in 4)",
            photos_to_learn(scratch.get("few_shot")),
            photos_to_learn(transfer.get("few_shot")),
        )
    )
    kept = [(side.get("few_shot") or {}).get("10", {}).get("old_classes") for side in (scratch, transfer)]
    if all(value is not None for value in kept):
        rows.append((f"Its five animals, after learning {animal} from 10 photos", *map(_percent, kept)))
    rows.append(
        (
            "Training time on 2 CPU cores",
            _duration(scratch["training_seconds"]),
            _duration(transfer["training_seconds"]),
        )
    )
    rows.append(
        (
            "Weights it had to learn",
            _millions(scratch["trainable_parameters"]),
            _millions(transfer["trainable_parameters"]),
        )
    )
    rows.append(("Time to answer one photo", f"{scratch['ms_per_photo']:.1f} ms", f"{transfer['ms_per_photo']:.1f} ms"))
    return rows


def lesson_markdown(lesson: dict[str, Any] | None) -> str:
    if lesson is None:
        return ""
    scratch, transfer = lesson["scratch"], lesson["transfer"]
    lines = [
        "### What transfer learning buys",
        f"Same network, two starts. *Trained from scratch* learned everything from "
        f"{scratch['training_photos']:,} photos. *Transfer learning* started from a network already trained "
        f"on ImageNet's 1.3 million photos and learned only its last layers from the same "
        f"{transfer['training_photos']:,}.",
        "",
        f"| | {HEADINGS['scratch']} | {HEADINGS['transfer']} |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {left} | {right} |" for what, left, right in lesson_rows(lesson)]
    lines.append(
        "\nThe first row alone hides the lesson: each animal of the training set comes from one photo "
        "collection, so a network trained from scratch can learn a collection's look instead of the "
        "animal. Photos from elsewhere show what each one really learned."
    )
    return "\n".join(lines)


def lesson_figure(lesson: dict[str, Any] | None) -> Any:
    """A grouped bar chart of the accuracy rows (matplotlib Figure), or None."""
    if lesson is None:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    labels = ["Same sources", "Other sources", "Blurred", "Tiny", "Compressed"]
    width = 0.38
    for offset, kind, colour in ((-width / 2, "scratch", "#d95f02"), (width / 2, "transfer", "#1b9e77")):
        values = [100 * (lesson[kind].get(key) or 0.0) for key, _ in ACCURACY_ROWS]
        positions = [i + offset for i in range(len(labels))]
        axes.bar(positions, values, width, label=HEADINGS[kind], color=colour)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel("photos recognised (%)")
    axes.set_ylim(0, 100)
    figure.legend(loc="outside upper center", ncol=2, fontsize="small", frameon=False)
    return figure
