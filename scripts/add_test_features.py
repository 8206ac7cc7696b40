"""Add the test split's pooled features to checkpoints' scope.npz, so `finetune --data` (teaching
new classes) can score the original classes without their photos.

    python scripts/add_test_features.py checkpoints/scratch-efficientnet_lite0 checkpoints/transfer-efficientnet_lite0

Needs the checkpoint's dataset on this machine (split.json's root). Rewrites scope.npz and
scope.json atomically through `scope.save_scope`; the detector itself is unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.checkpoints:
        if not (folder / "scope.json").is_file():
            print(f"error: {folder} has no scope.json", file=sys.stderr)
            return 2
    from animalcls.trust.scope_build import add_test_features

    for folder in args.checkpoints:
        print(f"{folder}: {add_test_features(folder)} test features added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
