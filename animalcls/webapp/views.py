"""What the web app shows, computed from checkpoint folders: headers, fact tables, report
tables, plot images and the side-by-side comparison. No Gradio here, so tests call it directly."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.store.checkpoints import (
    CONFUSION_PLOT,
    EVAL_FILE,
    HISTORY_FILE,
    HISTORY_PLOT,
    SPLIT_FILE,
    read_json,
    read_manifest,
)
from animalcls.training.reports import REPORT_HEADERS, report_rows
from animalcls.webapp.lesson import HEADINGS

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"  # the freely licensed photos shipped
# An absolute path (not part of a URL or a fraction like 3/10) and an environment variable name.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])/(?:[\w.@+-]+/)*([\w.@+-]+)/?")
_ENV_NAME = re.compile(r"\$?\b(?:ANIMALCLS|HF|GRADIO|KERAS|HUGGINGFACE)_[A-Z0-9_]+\b")


def public(text: str) -> str:
    """`text` fit for a page or API answer: every absolute path becomes its last part (a
    checkpoint or file NAME) and environment variable names become "a server setting"."""
    text = _ABSOLUTE_PATH.sub(lambda match: match.group(1), str(text))
    return _ENV_NAME.sub("a server setting", text)


def largest_input(folders: Iterable[Path | None]) -> int | None:
    """The largest image size among the checkpoints' manifests (what an upload is shrunk to)."""
    sizes = []
    for folder in folders:
        try:
            sizes.append(int(read_manifest(folder)["image_size"])) if folder is not None else None
        except (AnimalclsError, KeyError, TypeError, ValueError):
            continue
    return max(sizes) if sizes else None


def dataset_description(folder: Path) -> str:
    """A short description of a checkpoint's dataset, e.g. "2,100 training photos of 5 classes"."""
    manifest = read_manifest(folder)
    sizes = (manifest.get("dataset") or {}).get("sizes") or {}
    classes = manifest["class_names"]
    photos = f"{sizes['train']:,} training photos" if "train" in sizes else "its training photos"
    return f"{photos} of {len(classes)} classes: {', '.join(classes)}"


def missing_side_text(kind: str, note: str = "") -> str:
    hint = (
        f"No **{kind}** checkpoint is available on this server, so this side is empty. "
        f"Train one with `python -m animalcls train --model {kind} --data DIR --out checkpoints/{kind}-NAME` "
        f"or start the app with `--{kind} DIR`."
    )
    return f"{hint}\n\n{note}" if note else hint


def evaluation_of(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / EVAL_FILE
    return read_json(path) if path.is_file() else None


def report_frame(evaluation: dict[str, Any] | None) -> Any:
    """The classification report as a table (an empty one without an evaluation)."""
    import pandas as pd

    # Empty cells, not None: pandas turns None into NaN, which reaches the JSON as a bare NaN.
    rows = [["" if cell is None else cell for cell in row] for row in report_rows(evaluation)]
    return pd.DataFrame(rows, columns=REPORT_HEADERS)


def held_out_accuracy(folder: Path) -> float | None:
    """The test-split accuracy recorded in the checkpoint's eval.json, if any."""
    found = evaluation_of(folder)
    return float(found["accuracy"]) if found else None


def side_title(kind: str) -> str:
    """What a side is called on the page: "Trained from scratch", "Transfer learning (ImageNet)"."""
    return HEADINGS.get(kind, f"{kind.capitalize()} model")


def model_header(folder: Path | None, kind: str, note: str = "", swapped: bool = False) -> str:
    """Markdown: what the model is (in plain words), then its technical facts (name, backbone,
    image size, test accuracy) one click away."""
    title = side_title(kind)
    if folder is None:
        return f"### {title}\n\n{missing_side_text(kind, note)}"
    try:
        manifest = read_manifest(folder)
        accuracy = held_out_accuracy(folder)
    except AnimalclsError as exc:
        return f"### {title}\n\n**Unusable checkpoint:** {exc}"
    evaluation = evaluation_of(folder)
    n = f" on {evaluation['n']} test photos" if evaluation and "n" in evaluation else ""
    acc = f"test accuracy {accuracy:.1%}{n}" if accuracy is not None else "test accuracy unknown (no eval.json)"
    tag = f" ({swap_kind(manifest)}, swapped in)" if swapped else ""
    facts = f"{manifest['name']} · {manifest['backbone']} · {manifest['image_size']} px · {acc}"
    return f'### {title}{tag}\n\n<details class="tech"><summary>Technical facts</summary>{facts}</details>'


def swap_kind(manifest: Mapping[str, Any]) -> str:
    """How a swapped-in model was made, in a few words: "taught dog" or "fine-tuned"."""
    new_classes = (manifest.get("dataset") or {}).get("new_classes")
    taught = (manifest.get("training") or {}).get("teach") and new_classes
    return f"taught {', '.join(new_classes)}" if taught else "fine-tuned"


def top_label(probabilities: Mapping[str, float]) -> str:
    return max(probabilities.items(), key=lambda item: item[1])[0]


def comparison_markdown(results: Mapping[str, tuple[dict[str, float], float] | None]) -> str:
    """Whether the models agree, then every class in one fixed order with both probabilities."""
    present = {kind: result for kind, result in results.items() if result is not None}
    if not present:
        return ""
    tops = {kind: top_label(probs) for kind, (probs, _) in present.items()}
    if len(present) == 2:
        if tops["scratch"] == tops["transfer"]:
            verdict = f"**Both models agree: {tops['scratch']}.**"
        else:
            verdict = (
                f"**The models disagree:** scratch says **{tops['scratch']}**, transfer says **{tops['transfer']}**."
            )
    else:
        ((kind, only),) = tops.items()
        verdict = f"Only the {kind} model is available: **{only}**."
    order: list[str] = []
    for kind in ("transfer", "scratch"):  # one fixed class order: the transfer model's, then any extras
        if kind in present:
            order += [name for name in present[kind][0] if name not in order]
    kinds = [kind for kind in ("scratch", "transfer") if kind in present]
    lines = ["| class | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for name in order:
        cells = []
        for kind in kinds:
            value = present[kind][0].get(name)
            cell = "–" if value is None else f"{value:.1%}"
            cells.append(f"**{cell}**" if name == tops[kind] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return verdict + "\n\n" + "\n".join(lines)


def timing_line(seconds: float) -> str:
    return f"Inference (forward pass): **{seconds * 1000:.0f} ms**"


def facts_markdown(folder: Path) -> str:
    """Backbone, image size, data summary, epochs and training time from the manifest."""
    manifest = read_manifest(folder)
    training = manifest.get("training") or {}
    dataset = manifest.get("dataset") or {}
    sizes = dataset.get("sizes") or {}
    seconds = training.get("seconds")
    rows = [
        ("name", manifest["name"]),
        ("kind", manifest["kind"]),
        ("backbone", manifest["backbone"]),
        ("image size", f"{manifest['image_size']} px"),
        ("weights", manifest.get("weights") or "none (random init)"),
        ("classes", ", ".join(manifest["class_names"])),
        ("photos train / val / test", " / ".join(str(sizes.get(p, "?")) for p in ("train", "val", "test"))),
        (
            "epochs run",
            f"{training.get('epochs_run', '?')} of {training.get('epochs', '?')}"
            + (f" (best epoch {training['best_epoch']})" if training.get("best_epoch") else "")
            + (" — cancelled" if training.get("cancelled") else ""),
        ),
        (
            "optimizer",
            f"{training.get('optimizer', '?')}, learning rate {training.get('learning_rate', '?')}, "
            f"batch {training.get('batch_size', '?')}",
        ),
        ("training time", _duration(seconds) if isinstance(seconds, (int, float)) else "?"),
        ("created", manifest.get("created", "?")),
    ]
    source = manifest.get("finetuned_from")
    if isinstance(source, Mapping) and source.get("name"):
        rows.insert(1, ("fine-tuned from", str(source["name"])))
        if training.get("unfreeze_layers") is not None:
            rows.insert(2, ("unfrozen backbone layers", str(training["unfreeze_layers"])))
    table = ["| fact | value |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(table)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _rendered(folder: Path, name: str, render_dir: Path, draw: Any) -> str | None:
    """`folder/name` when the checkpoint has it, else a copy drawn ONCE into `render_dir`
    (written atomically under a name keyed by the folder and its manifest time): pictures are
    served as files, never as images encoded per request (Gradio's PIL cache races)."""
    from animalcls.core.atomic import write_atomic

    folder = Path(folder)
    if (folder / name).is_file():
        return str(folder / name)
    stamp = f"{folder.resolve()}:{(folder / 'manifest.json').stat().st_mtime_ns}"
    target = Path(render_dir) / f"{folder.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}" / name
    if not target.is_file():
        figure = draw()
        if figure is None:
            return None
        write_atomic(target, lambda handle: figure.savefig(handle, format="png", dpi=100))
    return str(target)


def history_file(folder: Path, render_dir: Path) -> str | None:
    """The path of the checkpoint's curves picture (history.png, drawn once if missing)."""

    def draw() -> Any:
        from animalcls.training.plots import history_figure

        path = Path(folder) / HISTORY_FILE
        return history_figure(read_json(path), read_manifest(folder)["name"]) if path.is_file() else None

    return _rendered(folder, HISTORY_PLOT, render_dir, draw)


def confusion_file(folder: Path, render_dir: Path) -> str | None:
    """The path of the checkpoint's confusion matrix picture (drawn once if missing)."""

    def draw() -> Any:
        from animalcls.training.plots import confusion_figure

        evaluation = evaluation_of(folder)
        if not evaluation:
            return None
        return confusion_figure(
            evaluation["confusion_matrix"], evaluation["class_names"], read_manifest(folder)["name"]
        )

    return _rendered(folder, CONFUSION_PLOT, render_dir, draw)


def dataset_root_of(folder: Path | None) -> Path | None:
    """The dataset a checkpoint was trained on, when it is on this machine."""
    from animalcls.data.dataset import Split

    if folder is None or not (Path(folder) / SPLIT_FILE).is_file():
        return None
    try:
        return Split.load(Path(folder) / SPLIT_FILE).locate_root(Path(folder))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def held_out_photos(folders: Sequence[Path | None], per_class: int = 2) -> list[str]:
    """A few photos of each class from the TEST split of each checkpoint's dataset, when that
    dataset is on this machine (never training photos)."""
    from animalcls.data.dataset import Split

    photos: list[str] = []
    for folder in folders:
        root = dataset_root_of(folder)
        if root is None:
            continue
        split = Split.load(Path(folder) / SPLIT_FILE)
        paths, labels = split.paths("test", root)
        taken: dict[int, int] = {}
        for path, label in zip(paths, labels):
            if taken.get(label, 0) < per_class and Path(path).is_file() and path not in photos:
                photos.append(path)
                taken[label] = taken.get(label, 0) + 1
    return photos


def folder_photos(folder: Path, limit: int = 20) -> list[str]:
    """Image files in `examples/`: the freely licensed photos the repository ships (credited in
    examples/CREDITS.md) plus any a user added, sorted by file name."""
    from animalcls.serving.inference import IMAGE_SUFFIXES

    shown = IMAGE_SUFFIXES - {".tif", ".tiff"}  # a browser shows no TIFF thumbnail
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in shown)
    return [str(p) for p in files[:limit]]


def example_caption(path: str | Path) -> str:
    """A caption from an example's file name, which starts with the expected answer:
    `cat-chelsea.jpg` -> "cat (chelsea)", `none-dog.jpg` -> "none of the five (dog)"."""
    answer, _, detail = Path(path).stem.partition("-")
    answer = "none of the five" if answer.lower() == "none" else answer
    detail = detail.replace("-", " ").replace("_", " ").strip()
    return f"{answer} ({detail})" if detail else answer


def folder_examples(folder: Path, limit: int = 20) -> list[tuple[str, str]]:
    """(path, caption) for each photo in `examples/`, for a clickable gallery that needs no dataset."""
    return [(path, example_caption(path)) for path in folder_photos(folder, limit)]


def tile_caption(path: str | Path) -> str:
    """The short caption under an example's thumbnail: the animal it shows, e.g. "cat" or
    "dog (not one of the five)" for a `none-dog.jpg`."""
    answer, _, detail = Path(path).stem.partition("-")
    if answer.lower() == "none":
        return f"{detail.replace('-', ' ').replace('_', ' ').strip() or 'other'} (not one of the five)"
    return answer


def training_photos(folders: Iterable[Path | None]) -> str:
    """How many training photos the served models learned from, e.g. "2,100" (the first known)."""
    for folder in folders:
        try:
            sizes = (read_manifest(folder).get("dataset") or {}).get("sizes") or {} if folder else {}
        except AnimalclsError:
            continue
        if isinstance(sizes.get("train"), int):
            return f"{sizes['train']:,}"
    return "a few thousand"


def intro_markdown(folders: Iterable[Path | None]) -> str:
    """The page's first words: what the two models are and what to look for."""
    photos = training_photos(folders)
    return (
        f"**Same network, two starts.** One was *trained from scratch*: all it knows comes from {photos} "
        "photos of animals. The other, by *transfer learning*, started from a network that had already learned "
        f"to see from ImageNet's 1.3 million photos, then learned the same {photos}. Try a photo and compare how "
        "sure each one is, and where each one looked: the difference is what transfer learning buys."
    )


HOW_TO_READ = """\
- **The bars** show how sure each model is about each animal it knows; they add up to 100 %.
- **The two models differ only in where they started**: random numbers, or what a network learned on ImageNet.
- **⚠ A warning** appears when a photo looks unlike anything the models were trained on. They must still pick \
one of the animals they know, so their answers are dimmed: they are guesses.
- **Heatmaps** (tick *Show where each model looked*): red marks the parts of the photo that pushed a model \
towards its answer.
- **The Training tab** shows how each model learned and what transfer learning buys at a glance; \
**Fine-tune** lets you train the transfer model further or teach both models a new animal.
"""


# The page's own style, passed to launch() (server.LAUNCH_OPTIONS): plain words first, one
# warning, dimmed untrusted answers, heatmap captions outside the picture, captioned examples.
PAGE_CSS = """
#intro { font-size: 1.05em; }
details.tech { font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: -0.4em; }
details.tech summary { cursor: pointer; width: fit-content; }
.scope-warning { border: 1px solid #f59e0b; border-left-width: 6px; background: #fffbeb; color: #78350f;
  border-radius: 8px; padding: 10px 14px; }
.scope-warning strong, .scope-warning summary { color: #78350f; }
.scope-warning details { margin-top: 0.4em; font-size: 0.9em; }
.scope-warning summary { cursor: pointer; width: fit-content; text-decoration: underline; }
.side-flagged { display: inline-block; font-size: 0.85em; color: #92400e; background: #fef3c7;
  border-radius: 4px; padding: 0 6px; }
.result-side:has(.side-flagged) .result-label { opacity: 0.4; filter: grayscale(1); }
.gradio-container:has(.scope-warning) #verdict { opacity: 0.5; }
.heatmap label[data-testid="block-label"] { position: static; margin: 0 0 4px 0; border-radius: 4px;
  width: fit-content; max-width: 100%; white-space: normal; }
#examples-user .gallery-item { display: inline-flex; flex-direction: column; align-items: center;
  justify-content: flex-start; width: 100px; }
#examples-user .gallery-item .container { width: 92px !important; height: 92px !important; }
#examples-user .gallery-item img { width: 100%; height: 100%; object-fit: cover; }
#examples-user .gallery-item::after { display: block; font-size: 12px; line-height: 1.25; min-height: 2.5em;
  max-width: 96px; text-align: center; padding: 3px 2px; color: var(--body-text-color); }
/* An input problem is one toast or one message by the input: no bare "Error" badge on outputs. */
#ft-progress [data-testid="status-tracker"] span.error, .teach-result [data-testid="status-tracker"] span.error,
#teach-status [data-testid="status-tracker"] span.error { display: none; }
@media (max-width: 640px) {
  #title h1 { font-size: 1.4rem; line-height: 1.25; }
  #intro, #known-classes { font-size: 0.92em; }
  #examples-user .gallery-item { width: 31%; }
  #examples-user .gallery-item .container { width: 100% !important; height: 84px !important; }
}
"""


def page_css(example_files: Iterable[str | Path]) -> str:
    """PAGE_CSS plus a caption under each example thumbnail (by its file name, which the
    thumbnail's address ends with)."""
    rules = [
        f'#examples-user .gallery-item:has(img[src$="/{Path(p).name}"])::after '
        f"{{ content: {json.dumps(tile_caption(p))}; }}"
        for p in example_files
        if '"' not in Path(p).name and "\\" not in Path(p).name
    ]
    return PAGE_CSS + "\n".join(rules)
