"""Store a transfer checkpoint's pooled features (train/val/test of its split) in its folder,
so the app can fine-tune its head where the photos are absent (a Hugging Face Space).

    python scripts/store_features.py checkpoints/transfer-efficientnet_lite0 [--data DIR]

Writes CHECKPOINT/features.npz (float16; see animalcls/store/stored_features.py). When the folder's
scope.npz already holds a part (train always, test once added), features.npz leaves it out: each
feature is stored once (the bundled transfer checkpoint's features.npz keeps only val).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, help="the dataset root (default: the one split.json locates)")
    args = parser.parse_args()
    if not (args.checkpoint / "split.json").is_file():
        parser.error(f"{args.checkpoint} has no split.json")

    import numpy as np

    from animalcls.data import dataset as data
    from animalcls.serving.features import backbone_key
    from animalcls.store import checkpoints
    from animalcls.store.stored_features import SCOPE_NPZ, extract_parts, load_features, save_features
    from animalcls.trust.scope import stored_parts

    split = data.Split.load(args.checkpoint / "split.json")
    root = data.dataset_root(args.data) if args.data else split.locate_root(args.checkpoint)
    if root is None:
        parser.error("the checkpoint's dataset is not on this machine: pass --data DIR")
    split.root = str(root)
    model = checkpoints.load_checkpoint(args.checkpoint).model
    parts = extract_parts(model, split)
    if (args.checkpoint / SCOPE_NPZ).is_file():
        for part, found in stored_parts(args.checkpoint, ("train", "test")).items():
            if len(found[1]) == len(parts[part][1]):
                gap = float(np.abs(found[0].astype(np.float32) - parts[part][0]).max())
                print(f"{part} features come from {SCOPE_NPZ} (max difference to a fresh extraction: {gap:.4f})")
                parts.pop(part)
    path = save_features(args.checkpoint, backbone_key(model), parts)
    stored = load_features(args.checkpoint)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB): {stored.sizes()}")


if __name__ == "__main__":
    main()
