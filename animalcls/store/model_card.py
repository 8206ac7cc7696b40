"""The model card (README.md) of a checkpoint pushed to the Hub: YAML metadata in the Hub's
schema and a Markdown body (metrics, confusion matrix, classes, usage, training, dataset,
limitations). Plain text from the checkpoint's files: no huggingface_hub import."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from animalcls.core.labels import ITALIAN_TO_ENGLISH
from animalcls.store import checkpoints
from animalcls.training.reports import report_markdown

DEFAULT_ENDPOINT = "https://huggingface.co"


def model_card(checkpoint_dir: Path, repo_id: str | None = None) -> str:
    """README.md for a checkpoint: `---` YAML metadata `---`, then the Markdown body."""
    folder = Path(checkpoint_dir).expanduser()
    manifest = checkpoints.read_manifest(folder)
    evaluation = _read_optional_json(folder / checkpoints.EVAL_FILE)
    meta = yaml.safe_dump(_card_metadata(manifest, evaluation), sort_keys=False, allow_unicode=True)
    body = _card_body(folder, manifest, evaluation, repo_id or "ORG/NAME")
    return f"---\n{meta}---\n\n{body}"


def _repo_url(repo_id: str, repo_type: str = "model") -> str:
    # HF_ENDPOINT is the variable huggingface_hub itself reads for its endpoint.
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT}/{prefix}{repo_id}"


def _read_optional_json(path: Path) -> Any:
    return checkpoints.read_json(path) if path.is_file() else None


def _source_dataset(manifest: dict[str, Any]) -> str | None:
    """ORG/NAME when the checkpoint was trained on an hf:// dataset (its root is in the Hub cache)."""
    dataset = manifest.get("dataset", {})
    if dataset.get("hub_dataset"):
        return str(dataset["hub_dataset"])
    root = str(dataset.get("root", ""))  # written by older versions
    match = re.search(r"datasets--([^/\\]+?)--([^/\\]+)", root)
    return f"{match[1]}/{match[2]}" if match else None


def _card_metadata(manifest: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """The Hub's model-card metadata (the keys and `model-index` schema of huggingface_hub's
    ModelCardData), as a plain dict."""
    source = _source_dataset(manifest)
    meta: dict[str, Any] = {
        "library_name": "keras",
        "license": "apache-2.0",
        "metrics": ["accuracy"],
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "keras", "animalcls", manifest["backbone"], manifest["kind"]],
    }
    if source:
        meta["datasets"] = [source]
    if evaluation is not None:
        dataset = {"name": _dataset_name(manifest), "type": source or "imagefolder", "split": "test"}
        metric = {"type": "accuracy", "value": round(float(evaluation["accuracy"]), 4), "name": "Test accuracy"}
        task = {"type": "image-classification", "name": "Image Classification"}
        meta["model-index"] = [
            {"name": manifest["name"], "results": [{"task": task, "dataset": dataset, "metrics": [metric]}]}
        ]
    return meta


def _dataset_name(manifest: dict[str, Any]) -> str:
    folders = manifest.get("dataset", {}).get("class_folders", {}).values()
    animals10 = folders and all(f in ITALIAN_TO_ENGLISH for f in folders)
    return f"Animals-10 ({len(manifest['class_names'])} classes)" if animals10 else "Image folder"


def _card_body(folder: Path, manifest: dict[str, Any], evaluation: dict[str, Any] | None, repo_id: str) -> str:
    names = manifest["class_names"]
    sections = [
        _intro(manifest),
        _metrics(evaluation, names),
        _confusion(folder, evaluation, names),
        _classes(names),
        _usage(manifest, repo_id),
        _training(folder, manifest),
        _dataset(manifest),
        _limitations(names),
    ]
    return "\n".join(line for section in sections for line in [*section, ""])


def _intro(manifest: dict[str, Any]) -> list[str]:
    how = (
        "trained from scratch (random initial weights)"
        if manifest["kind"] == "scratch"
        else f"trained by transfer learning (a frozen backbone with {manifest.get('weights') or 'no pretrained'} "
        "weights and a new classification head)"
    )
    return [
        f"# {manifest['name']}",
        "",
        f"An animalcls {manifest['kind']} image classifier for "
        f"{', '.join(manifest['class_names'])}: a Keras model on the `{manifest['backbone']}` backbone, {how}, "
        f"taking {manifest['image_size']}x{manifest['image_size']} RGB images.",
    ]


def _metrics(evaluation: dict[str, Any] | None, names: list[str]) -> list[str]:
    if evaluation is None:
        return ["## Evaluation", "", "No evaluation was recorded with this checkpoint (no eval.json)."]
    n = evaluation.get("n", sum(evaluation["report"][c]["support"] for c in names))
    intro = f"On the held-out test split ({n} images): **accuracy {evaluation['accuracy']:.4f}**."
    return ["## Evaluation", "", intro, "", *report_markdown(evaluation)]


def _confusion(folder: Path, evaluation: dict[str, Any] | None, names: list[str]) -> list[str]:
    lines = ["## Confusion matrix", ""]
    if (folder / checkpoints.CONFUSION_PLOT).is_file():
        lines += [f"![confusion matrix]({checkpoints.CONFUSION_PLOT})", ""]
    if evaluation is not None:
        lines += [
            "Rows: true class; columns: predicted class.",
            "",
            "| true \\ predicted | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        lines += [
            f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
            for name, row in zip(names, evaluation["confusion_matrix"])
        ]
    return lines


def _classes(names: list[str]) -> list[str]:
    return [
        "## Classes (output order)",
        "",
        "Output index i is the probability of class i:",
        "",
        *(f"{i}. `{name}`" for i, name in enumerate(names)),
    ]


def _usage(manifest: dict[str, Any], repo_id: str) -> list[str]:
    size = manifest["image_size"]
    return [
        "## How to use",
        "",
        "```bash",
        f"python -m animalcls download --repo-id {repo_id} --out checkpoints/",
        f"python -m animalcls predict checkpoints/{repo_id.split('/')[-1]} photo.jpg",
        "```",
        "",
        f"Or with Keras alone: the model takes float RGB pixels 0-255 of shape (batch, {size}, {size}, 3) and "
        f"does its own preprocessing ({manifest.get('preprocessing', 'inside the model')}); it outputs softmax "
        "probabilities in the class order above.",
        "",
        "```python",
        "import keras",
        "from huggingface_hub import hf_hub_download",
        f'model = keras.saving.load_model(hf_hub_download("{repo_id}", "model.keras"), safe_mode=True)',
        "```",
    ]


def _training(folder: Path, manifest: dict[str, Any]) -> list[str]:
    training = manifest.get("training") or {}
    lines = ["## Training configuration", ""]
    if not training:
        return [*lines, "Not recorded."]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in training.items()]
    if (folder / checkpoints.HISTORY_PLOT).is_file():
        lines += ["", f"![training history]({checkpoints.HISTORY_PLOT})"]
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["", "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    return lines


def _cell(value: Any) -> str:
    return "—" if value is None else str(value).replace("|", "\\|")


def _dataset(manifest: dict[str, Any]) -> list[str]:
    dataset = manifest.get("dataset") or {}
    names = manifest["class_names"]
    lines = ["## Dataset", ""]
    source = _source_dataset(manifest)
    where = f"the Hub dataset [{source}]({_repo_url(source, 'dataset')})" if source else _dataset_name(manifest)
    lines.append(
        f"Source: {where}; split 80/20 train+validation/test, stratified and seeded, byte-identical "
        "duplicates kept on one side (validation is taken from the training part, so the test split "
        "never picks a model)."
    )
    per_class = dataset.get("per_class") or {}
    if per_class:
        parts = [p for p in ("train", "val", "test") if p in per_class]
        lines += ["", "| class | folder | " + " | ".join(parts) + " |", "|---|---|" + "---:|" * len(parts)]
        folders = dataset.get("class_folders") or {}
        for name in names:
            counts = " | ".join(str(per_class[p].get(name, 0)) for p in parts)
            lines.append(f"| {name} | {folders.get(name, '—')} | {counts} |")
        totals = " | ".join(str(sum(per_class[p].values())) for p in parts)
        lines.append(f"| **total** | | {totals} |")
    skipped = dataset.get("skipped") or []
    if skipped:
        lines += ["", f"{len(skipped)} unreadable file(s) were skipped when scanning the dataset."]
    return lines


def _limitations(names: list[str]) -> list[str]:
    return [
        "## Intended use and limitations",
        "",
        f"- For demonstrations and teaching: it tells apart photos of exactly these {len(names)} classes "
        f"({', '.join(names)}). It has no 'other' class, so any other picture — a dog, another animal, "
        "no animal at all — is still forced into one of them, often with high confidence.",
        "- In the bundled training data each class came from a different source dataset, so the model may "
        "have learned cues of the source (framing, resolution, backgrounds, compression) rather than of the "
        "animal; expect lower accuracy on photos from elsewhere than the test score suggests.",
        "- Not for safety-critical use (e.g. wildlife, pest or food-safety decisions): check predictions yourself.",
        "- The test score comes from one seeded split of one dataset; it is not a guarantee on other data.",
    ]
