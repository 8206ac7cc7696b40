"""The TensorFlow-free resize used at inference equals the tf.data resize used in training."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animalcls.data.dataset import decode_resize
from animalcls.data.preprocessing import Preprocessing, to_model_input

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-offline" / "raw-img"


def _tf_resize(path: Path, size: int) -> np.ndarray:
    import tensorflow as tf

    return decode_resize(tf.io.read_file(str(path)), size).numpy()


def _pil_resize(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        return to_model_input(image.convert("RGB"), size)


@pytest.mark.parametrize("shape", [(37, 501), (192, 192), (300, 170)])
@pytest.mark.parametrize("size", [32, 128, 224, 600])
def test_pil_resize_matches_tensorflow_on_synthetic_images(tmp_path, shape, size):
    rng = np.random.default_rng(size)
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    pixels[: shape[0] // 2, :, 0] = 255  # an edge, where filters differ most
    Image.fromarray(pixels).save(tmp_path / "x.png")
    via_tf, via_pil = _tf_resize(tmp_path / "x.png", size), _pil_resize(tmp_path / "x.png", size)
    assert via_pil.shape == via_tf.shape == (size, size, 3) and via_pil.dtype == np.float32
    assert np.abs(via_pil - via_tf).max() < 0.02  # of 255


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/animals10-offline")
def test_pil_resize_matches_tensorflow_on_real_photos():
    """The resize alone, on the same decoded pixels: TF's and PIL's JPEG decoders differ by a
    few levels on their own (they did before this function existed: inference has always
    decoded with PIL), which is not what this test is about."""
    import tensorflow as tf

    photos = [sorted(folder.iterdir())[0] for folder in sorted(REAL.iterdir()) if folder.is_dir()]
    for photo in photos:
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
        for size in (128, 224, 299):
            via_tf = tf.image.resize(np.asarray(rgb, np.float32), (size, size), antialias=True).numpy()
            assert np.abs(to_model_input(rgb, size) - via_tf).max() < 0.02, (photo.name, size)


def test_unsupported_resize_is_refused():
    with pytest.raises(ValueError, match="antialiased"):
        to_model_input(Image.new("RGB", (8, 8)), 4, Preprocessing(scale=1.0, resize="nearest"))
