"""Train the "scratch-robust" recipe on a GPU machine with Keras's JAX backend (no TensorFlow
there), and measure InceptionV3 training throughput at 299 px.

Three steps (README, "The bundled checkpoints"):

1. Here, pack the recorded train/val photos of a split (test photos are never packed) and a copy
   of the code into an ignored folder that travels to the GPU machine:

       python scripts/train_scratch_device.py pack --data ../shared/data/animals10-offline/raw-img \\
           --split checkpoints/scratch-efficientnet_lite0/split.json --out .qdev

   The photos are re-encoded at 160 px, JPEG quality 80 (about 19 MB instead of 33 MB), so the
   repository plus the pack fit the machine's 64 MiB transfer limit.

2. There (Python 3.12 with JAX; Keras, namex and optree carried as wheels in .qdev/whl):

       bash .qdev/code/scripts/device_run.sh          # see that script for the exact commands

   `train` writes VARIANT.weights.h5 (float32), VARIANT.history.json and VARIANT.json under --out;
   `bench-inception` writes inception_bench.json and a Markdown table.

3. Here, `python scripts/adopt_device_weights.py` loads the weights into the TensorFlow-backend
   model and writes a complete checkpoint folder (manifest, eval, split, history, plots).

The same recipe runs on CPU through `python -m animalcls train --preset scratch-robust` (slowly).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

PACK_SIZE, PACK_QUALITY = 160, 80
VARIANTS = {
    # name: (RobustAugment overrides, TrainConfig overrides)
    "robust": ({}, {}),
    "nodegrade": ({"degrade": False, "grey_p": 0.0}, {}),
    "nomix": ({}, {"mix": 0.0}),
}


# ---------------------------------------------------------------- pack (here, no Keras)


def pack(data: Path, split_file: Path, out: Path) -> None:
    split = json.loads(split_file.read_text())
    items = [(rel, label, 0) for rel, label in split["train"]] + [(rel, label, 1) for rel, label in split["val"]]
    blobs = []
    for rel, _, _ in items:
        with Image.open(data / rel) as image:
            image = image.convert("RGB").resize((PACK_SIZE, PACK_SIZE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=PACK_QUALITY)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    (out / "data").mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "data" / "trainval.npz",
        blob=np.concatenate(blobs),
        offsets=np.cumsum([0] + [len(b) for b in blobs]),
        labels=np.array([label for _, label, _ in items]),
        part=np.array([part for _, _, part in items]),  # 0 train, 1 val
        class_names=np.array(split["class_names"]),
    )
    code = out / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(REPO / "animalcls", code / "animalcls", ignore=shutil.ignore_patterns("__pycache__"))
    (code / "scripts").mkdir(parents=True)
    for name in ("train_scratch_device.py", "device_run.sh"):
        shutil.copy2(REPO / "scripts" / name, code / "scripts" / name)
    print(f"packed {len(items)} photos ({sum(len(b) for b in blobs) / 1e6:.1f} MB) and the code into {out}")


def load_pack(path: Path) -> tuple[list[Image.Image], np.ndarray, np.ndarray, list[str]]:
    pack_file = np.load(path)
    blob, offsets = pack_file["blob"], pack_file["offsets"]
    photos = [Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB") for a, b in zip(offsets[:-1], offsets[1:])]
    return photos, pack_file["labels"], pack_file["part"], [str(n) for n in pack_file["class_names"]]


def load_split(data: Path, split_file: Path) -> tuple[list[Image.Image], np.ndarray, np.ndarray, list[str]]:
    """The original train/val photos of a split (the CPU path; test photos are never loaded)."""
    split = json.loads(split_file.read_text())
    items = [(rel, label, 0) for rel, label in split["train"]] + [(rel, label, 1) for rel, label in split["val"]]
    photos = []
    for rel, _, _ in items:
        with Image.open(data / rel) as image:
            photos.append(image.convert("RGB"))
    return photos, np.array([i[1] for i in items]), np.array([i[2] for i in items]), list(split["class_names"])


# ---------------------------------------------------------------- train (there)


def train(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.pack:
        photos, labels, part, class_names = load_pack(Path(args.pack))
    else:
        photos, labels, part, class_names = load_split(Path(args.data), Path(args.split))
    import keras

    from animalcls.data import augment
    from animalcls.models import builders as models
    from animalcls.training.train import PRESETS, CosineWarmup, HistoryRecorder, compile_model

    aug_overrides, config_overrides = VARIANTS[args.variant]
    config = PRESETS["scratch-robust"].replace(
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs,
        **config_overrides,
    )
    config = config.replace(mix=args.mix)
    recipe = augment.RobustAugment(image_size=config.image_size, **aug_overrides)
    keras.utils.set_random_seed(config.seed)
    if args.precision != "float32":
        keras.config.set_dtype_policy(args.precision)
    model = models.build_scratch(
        config.backbone, len(class_names), config.image_size, config.dropout, config.bn_momentum
    )
    if args.init:
        # Longer training of an earlier from-scratch run: its weights, never pretrained ones.
        model.set_weights(keras.models.load_model(Path(args.init) / "model.keras", compile=False).get_weights())
    compile_model(model, config)
    if args.no_jit:
        model.jit_compile = False  # XLA's compile of this step took over 15 min on 2 busy CPU cores
    train_idx, val_idx = np.flatnonzero(part == 0)[: args.limit], np.flatnonzero(part == 1)[: args.limit]
    stream = augment.batch_stream(
        [photos[i] for i in train_idx],
        labels[train_idx],
        len(class_names),
        recipe,
        config.batch_size,
        seed=config.seed,
        mix_p=config.mix,
        workers=args.workers,
        prefetch=2 * args.workers,
    )
    size = (config.image_size, config.image_size)
    x_val = np.stack([np.asarray(photos[i].resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)) for i in val_idx])
    y_val = np.eye(len(class_names), dtype=np.float32)[labels[val_idx]]
    cosine = CosineWarmup(config.learning_rate, config.epochs, config.warmup_epochs)
    budget = TimeBudget(cosine, args.budget - (time.perf_counter() - start))
    out = Path(args.out)
    recorder = HistoryRecorder(out / f"{args.variant}.history.json")
    fit_start = time.perf_counter()
    model.fit(
        stream,
        steps_per_epoch=augment.steps_per_epoch(len(train_idx), config.batch_size),
        validation_data=(x_val.astype(np.float32), y_val),
        epochs=config.epochs,
        callbacks=[recorder, cosine, budget, *_keep_last(args, out)],
        verbose=args.verbose,
        shuffle=False,
    )
    fit_seconds = time.perf_counter() - fit_start
    keras.config.set_dtype_policy("float32")
    plain = models.build_scratch(
        config.backbone, len(class_names), config.image_size, config.dropout, config.bn_momentum
    )
    plain.set_weights([np.asarray(w, np.float32) for w in model.get_weights()])
    plain.save_weights(out / f"{args.variant}.weights.h5")
    info = {
        "variant": args.variant,
        "config": {**config.to_json(), "epochs_run": len(recorder.history.get("loss", []))},
        "augment": recipe.to_json(),
        "precision": args.precision,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "device": _device_name(),
        "fit_seconds": round(fit_seconds, 1),
        "train_images_per_second": round(
            len(recorder.history.get("loss", [])) * len(train_idx) / max(fit_seconds, 1e-9), 1
        ),
        "final_val_accuracy": recorder.history.get("val_accuracy", [None])[-1],
        "init": Path(args.init).name if args.init else None,
        "pack": None
        if not args.pack
        else {"size": PACK_SIZE, "jpeg_quality": PACK_QUALITY, "train": int(len(train_idx)), "val": int(len(val_idx))},
    }
    (out / f"{args.variant}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: info[k] for k in ("variant", "fit_seconds", "train_images_per_second", "final_val_accuracy")}))


class TimeBudget:
    """Keras callback factory: after the second epoch (the first one compiles), shorten the cosine
    schedule so the run ends within `seconds`, and stop there."""

    def __new__(cls, cosine, seconds: float):
        import keras

        class _Budget(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.begin, self.marks = time.perf_counter(), []

            def on_epoch_end(self, epoch, logs=None):
                self.marks.append(time.perf_counter())
                if epoch == 1:
                    per_epoch = self.marks[1] - self.marks[0]
                    left = seconds - (self.marks[1] - self.begin)
                    cosine.total_epochs = min(cosine.total_epochs, 2 + int(left / per_epoch))
                    print(f"epoch {per_epoch:.2f} s; schedule set to {cosine.total_epochs} epochs", flush=True)
                if epoch + 1 >= cosine.total_epochs or time.perf_counter() - self.begin > seconds + 20:
                    self.model.stop_training = True

        return _Budget()


def _keep_last(args: argparse.Namespace, out: Path) -> list:
    """On a long CPU run, the weights after every epoch, so a crash keeps what was learned."""
    import keras

    if not args.save_every_epoch:
        return []
    return [keras.callbacks.ModelCheckpoint(str(out / f"{args.variant}.last.weights.h5"), save_weights_only=True)]


def _device_name() -> str:
    try:
        import jax

        return str(jax.devices()[0].device_kind)
    except Exception:  # noqa: BLE001 - any backend
        return "cpu"


# ---------------------------------------------------------------- InceptionV3 throughput (there)


def bench_inception(args: argparse.Namespace) -> None:
    import jax
    import keras

    rows, start = [], time.perf_counter()
    for policy in args.policies.split(","):
        if time.perf_counter() - start > args.budget:
            rows.append({"policy": policy, "skipped": "time budget"})
            continue
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        model = keras.applications.InceptionV3(weights=None, input_shape=(args.size, args.size, 3), classes=1000)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
        x = jax.device_put(
            np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
        )
        y = jax.device_put(np.random.default_rng(1).integers(0, 1000, (args.batch,)))
        t0 = time.perf_counter()
        for _ in range(2):
            model.train_on_batch(x, y)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = model.train_on_batch(x, y)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "policy": policy,
                "batch": args.batch,
                "steps": args.steps,
                "compile_and_2_steps_s": round(compile_s, 1),
                "images_per_second": round(args.batch * args.steps / seconds, 1),
                "last_loss": float(np.asarray(loss)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del model
    keras.config.set_dtype_policy("float32")
    result = {
        "device": _device_name(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "jax": jax.__version__,
        "image_size": args.size,
        "rows": rows,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "inception_bench.json").write_text(json.dumps(result, indent=1))
    table = ["| precision | batch | img/s | compile + 2 steps (s) |", "|---|---|---|---|"]
    table += [
        f"| {r['policy']} | {r.get('batch', '')} | {r.get('images_per_second', r.get('skipped'))} | "
        f"{r.get('compile_and_2_steps_s', '')} |"
        for r in rows
    ]
    (Path(args.out) / "inception_bench.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", default=".qdev")
    p = sub.add_parser("train")
    p.add_argument("--pack", help="a pack made by `pack` (the GPU machine)")
    p.add_argument("--data", help="or the dataset folder and --split (here)")
    p.add_argument("--split")
    p.add_argument("--init", help="start from this checkpoint folder's weights (an earlier scratch run)")
    p.add_argument("--mix", type=float, help="override the preset's MixUp/CutMix share")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--save-every-epoch", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="robust")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=300, help="most epochs; the time budget may end sooner")
    p.add_argument("--budget", type=float, default=240.0, help="seconds for the whole run, loading included")
    p.add_argument("--precision", default="mixed_bfloat16", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--limit", type=int, help="use only the first N train and val photos (dry runs)")
    p.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity: 1 per step, 2 per epoch")
    p.add_argument("--no-jit", action="store_true", help="run the train step without XLA (TensorFlow on CPU)")
    p = sub.add_parser("bench-inception")
    p.add_argument("--out", required=True)
    p.add_argument("--policies", default="float32,mixed_bfloat16,mixed_float16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--budget", type=float, default=120.0, help="start no new precision after this many seconds")
    args = parser.parse_args()
    if args.command == "pack":
        pack(Path(args.data), Path(args.split), Path(args.out))
    elif args.command == "train":
        Path(args.out).mkdir(parents=True, exist_ok=True)
        train(args)
    else:
        bench_inception(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    raise SystemExit(main())
