"""A visitor's fine-tune in use is never removed by other visitors' fine-tunes while their session
lives (the store pins it); it is removed like any other once the session ends. The store over its
caps is pruned at start, and the Fine-tune tab says how many fine-tunes the caps really keep."""

from __future__ import annotations

import time

import pytest
from conftest import launched_app, make_image, stored_finetune

from animalcls.webapp.sessions import FinetuneStore, StoreLimits, new_session

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


def _wait_until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_used_finetune_survives_other_visitors_finetunes_until_its_session_ends(tiny_checkpoints, tmp_path):
    from gradio_client import Client, handle_file

    photo = handle_file(str(make_image(tmp_path / "photo.jpg", (220, 40, 40), size=48)))
    with launched_app(tiny_checkpoints, tmp_path, limits=StoreLimits(max_count=2, max_bytes=10**9)) as (url, demo):
        store = demo.animalcls_app.store
        x, y = (
            Client(url, verbose=False, httpx_kwargs={"timeout": 60}),
            Client(url, verbose=False, httpx_kwargs={"timeout": 60}),
        )
        mine = x.predict(1, 1e-3, 0, api_name="/finetune")[6]
        x.predict(mine, api_name="/use_model")
        for _ in range(3):  # more than the store keeps
            status = y.predict(1, 1e-3, 0, api_name="/finetune")[0]
            assert status.startswith("**Done.**"), status
        assert (store.root / mine).is_dir() and len(store.stored()) == 2  # the cap holds for the others
        assert mine in x.predict(photo, api_name="/classify")[2]
        assert mine in x.predict(mine, api_name="/use_model")[0]
        x.close()  # the session ends: its fine-tune is no longer pinned
        _wait_until(lambda: mine not in store.pins.names(), "unpin after the session ended")
        y.predict(1, 1e-3, 0, api_name="/finetune")
        assert not (store.root / mine).exists()
        y.close()


def test_pinned_finetunes_stay_and_past_the_ceiling_a_new_one_is_refused(tmp_path):
    root = tmp_path / "finetunes"
    folders = [stored_finetune(root, f"t-ft-{i}", 1000, age=100 - i) for i in range(6)]  # 0 is the oldest
    store = FinetuneStore(root, StoreLimits(max_count=2, max_bytes=10**6))
    first = store.pin({**new_session(), "owned": ["t-ft-0"]}, "visitor-x")
    second = store.pin({**new_session(), "models": {"transfer": "t-ft-1"}, "owned": ["t-ft-1", "t-ft-2"]}, "visitor-y")
    assert first["pin"] == "visitor-x" and second["pin"] == "visitor-y"
    assert store.crowded() is None  # 3 pinned, the ceiling is 4
    assert store.prune(keep=[folders[5]]) == ["t-ft-3", "t-ft-4"]
    assert sorted(p.name for p in store.stored()) == ["t-ft-0", "t-ft-1", "t-ft-2", "t-ft-5"]
    store.pin({**new_session(), "owned": ["t-ft-5"]}, "visitor-z")
    assert "visitors are using" in store.crowded()
    store.pins.drop("visitor-y")
    assert store.crowded() is None
    assert store.prune() == ["t-ft-1", "t-ft-2"]


def test_the_store_is_pruned_at_start_and_the_tab_says_the_real_limit(tiny_checkpoints, tmp_path):

    from animalcls.webapp.handlers import AnimalApp

    root = tmp_path / "finetunes"
    for i in range(4):
        stored_finetune(root, f"transfer-tiny-ft-{i}", 3 * 2**20, age=100 - i)
    app = AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        use_hub=False,
        finetune_root=root,
        examples_dir=tmp_path,
        limits=StoreLimits(max_count=5, max_bytes=7 * 2**20),
    )
    assert sorted(p.name for p in app.store.stored()) == ["transfer-tiny-ft-2", "transfer-tiny-ft-3"]
    intro = app.finetune_tab.finetune_intro()
    assert "The newest 2 fine-tunes are kept" in intro and "5 fine-tunes" not in intro, intro
