"""The Training tab's "what transfer learning buys": plain words from checkpoints/lesson.json."""

from __future__ import annotations

import json

from animalcls.webapp.lesson import lesson_figure, lesson_markdown, load_lesson, photos_to_learn


def _side(test: float, cross: float, curve: dict, seconds: float, trainable: int) -> dict:
    return {
        "name": "x",
        "image_size": 96,
        "test_accuracy": test,
        "test_photos": 600,
        "cross_source_accuracy": cross,
        "blur_accuracy": 0.5,
        "downscale_accuracy": 0.6,
        "jpeg_accuracy": 0.7,
        "few_shot": curve,
        "training_seconds": seconds,
        "training_photos": 2100,
        "imagenet_start": False,
        "trainable_parameters": trainable,
        "parameters": 3_400_000,
        "ms_per_photo": 2.63,
    }


LESSON = {
    "scratch": _side(
        0.898,
        0.632,
        {
            "5": {"dog": 0.25, "old_classes": 0.85},
            "10": {"dog": 0.09, "old_classes": 0.884},
            "20": {"dog": 0.36, "old_classes": 0.8},
        },
        2310.0,
        3_400_000,
    ),
    "transfer": _side(
        0.998,
        1.0,
        {
            "5": {"dog": 0.76, "old_classes": 0.99},
            "10": {"dog": 0.9, "old_classes": 0.998},
            "20": {"dog": 0.93, "old_classes": 0.99},
        },
        195.1,
        660_000,
    ),
    "few_shot_setup": {"draws": 5, "epochs": 10, "new_class": "dog"},
}


def test_photos_to_learn_is_the_fewest_that_reach_three_in_four():
    assert photos_to_learn(LESSON["transfer"]["few_shot"]) == "5 photos"
    assert photos_to_learn(LESSON["scratch"]["few_shot"]) == "more than 20 (at best 36.0 %)"
    assert photos_to_learn(None) == "–"


def test_the_markdown_names_both_models_in_plain_words():
    text = lesson_markdown(LESSON)
    assert "Trained from scratch" in text and "Transfer learning (ImageNet)" in text
    assert "| Photos of the same animals from other sources | 63.2 % | 100.0 % |" in text
    assert "| Training time on 2 CPU cores | 38 min | 3 min |" in text
    assert "3.40 million" in text and "660 thousand" in text
    assert "| Its five animals, after learning dog from 10 photos | 88.4 % | 99.8 % |" in text
    assert "scope" not in text.lower() and "pooled" not in text.lower()


def test_missing_or_broken_file_shows_nothing(tmp_path):
    assert load_lesson(tmp_path) is None and lesson_markdown(None) == "" and lesson_figure(None) is None
    (tmp_path / "lesson.json").write_text("{not json")
    assert load_lesson(tmp_path) is None
    (tmp_path / "lesson.json").write_text(json.dumps(LESSON))
    assert load_lesson(tmp_path) == LESSON


def test_the_chart_has_a_bar_per_model_and_accuracy():
    figure = lesson_figure(LESSON)
    bars = figure.axes[0].patches
    assert len(bars) == 10
    assert round(bars[1].get_height()) == 63 and round(bars[6].get_height()) == 100


def test_the_lesson_is_shown_only_for_the_pair_it_was_measured_on(tmp_path):
    import shutil

    from animalcls.core.settings import BUNDLED_DIR
    from animalcls.store.checkpoints import default_pair
    from animalcls.webapp.lesson import lesson_for

    pair = default_pair()
    lesson = lesson_for(pair, BUNDLED_DIR)
    assert lesson is not None and lesson["transfer"]["name"] == pair["transfer"].name
    other = tmp_path / pair["scratch"].name  # same name, another model
    other.mkdir()
    evaluation = json.loads((pair["scratch"] / "eval.json").read_text())
    (other / "eval.json").write_text(json.dumps({**evaluation, "accuracy": 0.5}))
    assert lesson_for({**pair, "scratch": other}, BUNDLED_DIR) is None
    assert lesson_for({**pair, "scratch": None}, BUNDLED_DIR) is None
    shutil.rmtree(other)


def test_the_training_tab_opens_with_the_lesson(tmp_path):
    import app

    demo = app.build_demo(use_hub=False, finetune_root=tmp_path / "ft")
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert any(isinstance(t, str) and t.startswith("### What transfer learning buys") for t in texts)
