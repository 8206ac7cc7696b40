"""The app's server-side job state: what a watcher of a fine-tune sees, with real threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from animalcls.core.hooks import TrainHooks
from animalcls.webapp.state import BackgroundWarmUp, FinetuneRunner


def quick_job(hooks: TrainHooks) -> str:
    """Extracts features and trains one epoch in a few milliseconds: faster than one watch interval."""
    hooks.on_features(10, 10)
    hooks.on_batch(1, 1, 1, {"loss": 0.5})
    hooks.on_epoch(1, {"loss": [0.5]})
    return "saved"


def test_a_job_faster_than_one_interval_still_shows_its_work_before_done():
    job = FinetuneRunner().start(quick_job, epochs=1)
    job.join(timeout=10)
    phases = [(s.phase, s.epochs_done) for s in job.watch(interval=0.5)]
    assert phases == [("training", 1), ("done", 1)]


def test_a_slow_job_is_watched_phase_by_phase_and_ends_with_done():
    release = threading.Event()

    def slow_job(hooks: TrainHooks) -> str:
        hooks.on_features(5, 10)
        release.wait(10)
        hooks.on_batch(1, 1, 1, {"loss": 0.4})
        return "saved"

    job = FinetuneRunner().start(slow_job, epochs=1)
    seen = []
    for snapshot in job.watch(interval=0.05):
        seen.append(snapshot.phase)
        if snapshot.phase == "features":
            release.set()
    assert seen[0] == "features" and seen[-1] == "done"
    assert seen.count("done") == 1 and "training" in seen


def test_a_failing_job_shows_its_last_work_then_failed():
    def failing(hooks: TrainHooks) -> None:
        hooks.on_features(3, 10)
        raise RuntimeError("disk full")

    job = FinetuneRunner().start(failing, epochs=1)
    job.join(timeout=10)
    assert [s.phase for s in job.watch(interval=0.5)] == ["features", "failed"]
    assert isinstance(job.error, RuntimeError)


def test_only_models_with_fresh_graphs_load_before_gradio(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from conftest import copy_checkpoint

    assert BackgroundWarmUp.can_start_early(dict(tiny_checkpoints))
    assert BackgroundWarmUp.can_start_early({"scratch": None, "transfer": None})
    stale = copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / "transfer-tiny")
    (stale / "model.onnx").unlink()  # loading it would convert it with TensorFlow
    assert not BackgroundWarmUp.can_start_early({"scratch": tiny_checkpoints["scratch"], "transfer": stale})
    monkeypatch.setenv("ANIMALCLS_ENGINE", "tf")
    assert not BackgroundWarmUp.can_start_early(dict(tiny_checkpoints))


def test_background_warm_up_reports_when_an_empty_pair_is_ready():
    started = time.perf_counter()
    warm_up = BackgroundWarmUp({"scratch": None, "transfer": None}, started).start()
    assert 0 <= warm_up.wait() < 5


def test_background_warm_up_loads_the_models_into_the_process_cache(tiny_checkpoints: dict[str, Path]):
    from animalcls.serving import inference

    warm_up = BackgroundWarmUp(dict(tiny_checkpoints), time.perf_counter()).start()
    warm_up.wait()
    # The app's own registry then finds them in the process-wide cache: no second load.
    cached = {str(Path(path).parent) for path in inference._CACHE.paths()}
    assert {str(folder.resolve()) for folder in tiny_checkpoints.values()} <= cached
