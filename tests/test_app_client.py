"""The app served in-process on 127.0.0.1 and driven through gradio_client, as an API user would."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from conftest import launched_app, make_image

# Gradio's own queue code triggers pandas deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    """(url, AnimalApp) of a running server; closed after the module."""
    with launched_app(tiny_checkpoints, tmp_path_factory.mktemp("app-client"), max_epochs=100, max_unfreeze=2) as (
        url,
        demo,
    ):  # caps wide enough for a real fine-tune
        yield url, demo.animalcls_app


# httpx's default is 5 s; fetching /config right after a fine-tune on a loaded 2-core machine took longer.
CLIENT_TIMEOUT_S = 120


def new_client(url: str):
    """A gradio_client session with a timeout a busy machine can meet (also each read of the event stream)."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})


@pytest.fixture(scope="module")
def client(server):
    return new_client(server[0])


@pytest.fixture(scope="module")
def photo(tiny_checkpoints) -> str:
    from animalcls.webapp.views import held_out_photos

    return held_out_photos([tiny_checkpoints["transfer"]])[0]


def expected_verdict(scratch_top: str, transfer_top: str) -> str:
    """The start of the comparison for these two answers ("agree" alone also matches "disagree")."""
    if scratch_top == transfer_top:
        return f"**Both models agree: {scratch_top}.**"
    return f"**The models disagree:** scratch says **{scratch_top}**, transfer says **{transfer_top}**."


def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/classify", "/finetune", "/cancel_finetune", "/use_model", "/restore_models", "/model_info"):
        assert name in endpoints


def test_classify_round_trip(client, photo):
    from gradio_client import handle_file

    scratch_info, scratch_label, transfer_info, transfer_label, verdict, *_ = client.predict(
        handle_file(photo), api_name="/classify"
    )
    assert "scratch-tiny" in scratch_info and "transfer-tiny" in transfer_info
    for label in (scratch_label, transfer_label):
        assert len(label["confidences"]) == 5
        assert label["label"] == label["confidences"][0]["label"]
    assert verdict.startswith(expected_verdict(scratch_label["label"], transfer_label["label"]))


def test_bad_upload_gets_a_clear_error_then_a_good_one_works(client, photo, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "holiday.txt"
    bad.write_text("these are not the pixels you are looking for")
    with pytest.raises(Exception) as error:
        client.predict(handle_file(str(bad)), api_name="/classify")
    assert "holiday.txt is not an image" in str(error.value)
    assert "verbose error reporting" not in str(error.value)  # not Gradio's generic text

    corrupt = tmp_path / "broken.jpg"
    full = make_image(tmp_path / "full.jpg", (200, 30, 30), size=400, seed=3).read_bytes()
    corrupt.write_bytes(full[: len(full) // 2])
    with pytest.raises(Exception, match="corrupt or truncated"):
        client.predict(handle_file(str(corrupt)), api_name="/classify")

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(51 * 2**20)  # over LAUNCH_OPTIONS["max_file_size"]: refused before the upload
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(huge)), api_name="/classify")

    result = client.predict(handle_file(photo), api_name="/classify")
    assert len(result[1]["confidences"]) == 5


def test_classify_latency(client, photo):
    from gradio_client import handle_file

    client.predict(handle_file(photo), api_name="/classify")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        client.predict(handle_file(photo), api_name="/classify")
        times.append(time.perf_counter() - start)
    print(f"classify through gradio_client: median {statistics.median(times) * 1000:.0f} ms")
    assert statistics.median(times) < 5.0


@pytest.mark.slow
def test_finetunes_queue_one_at_a_time_and_only_the_owner_cancels(server, client, photo, monkeypatch):
    from conftest import blocking_finetune
    from gradio_client import handle_file
    from gradio_client.utils import Status

    import animalcls.heads.finetune

    started = threading.Event()
    monkeypatch.setattr(animalcls.heads.finetune, "finetune", blocking_finetune(started))
    job = client.submit(3, 1e-3, 0, api_name="/finetune")
    assert started.wait(60), "the fine-tune never started"
    started.clear()
    other = new_client(server[0])
    waiting = other.submit(1, 1e-3, 0, api_name="/finetune")
    deadline = time.monotonic() + 30
    while waiting.status().code != Status.IN_QUEUE and time.monotonic() < deadline:
        time.sleep(0.2)
    status = waiting.status()
    assert status.code == Status.IN_QUEUE and status.rank is not None  # the page shows "queue: 1/1"
    start = time.perf_counter()
    assert len(client.predict(handle_file(photo), api_name="/classify")[1]["confidences"]) == 5
    assert time.perf_counter() - start < 10  # served while the fine-tune holds its worker
    assert other.predict(api_name="/cancel_finetune") == "No fine-tune of yours is running."
    assert not job.done()
    assert "Cancelling" in client.predict(api_name="/cancel_finetune")
    assert job.result(timeout=60)[0].startswith("**Cancelled**")
    assert started.wait(60), "the queued fine-tune never started"  # its turn came
    assert "Cancelling" in other.predict(api_name="/cancel_finetune")
    assert waiting.result(timeout=60)[0].startswith("**Cancelled**")


@pytest.mark.slow
def test_classify_stays_responsive_during_a_real_finetune(server, client, photo):
    """A real fine-tune (tiny backbone, top layers unfrozen, so it trains on images every epoch)
    keeps a CPU busy; classification is still answered meanwhile (a second fine-tune would wait in
    the queue: see the test above)."""
    from gradio_client import handle_file

    runner = server[1].runner
    previous = runner.current  # an earlier test's finished job
    job = client.submit(100, 1e-3, 2, api_name="/finetune")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        runner.current is not previous and runner.current.progress().epochs_done >= 1
    ):
        time.sleep(0.2)
    assert runner.current.progress().epochs_done >= 1, "the fine-tune never finished an epoch"
    start = time.perf_counter()
    assert len(client.predict(handle_file(photo), api_name="/classify")[1]["confidences"]) == 5
    elapsed = time.perf_counter() - start
    assert runner.current.running and not job.done()  # it was training all along
    assert elapsed < 10, f"classify took {elapsed:.1f} s during a fine-tune"
    assert "Cancelling" in client.predict(api_name="/cancel_finetune")
    status = job.result(timeout=120)[0]
    assert status.startswith("**Cancelled**; kept the ") and "finished epoch(s)" in status


@pytest.mark.parametrize(
    "settings, message",
    [
        (("three", 1e-3, 0), r"- epochs: Epochs must be a whole number from 1 to 100"),
        ((3, "fast", 0), r"- learning_rate: The learning rate must be a number above 0"),
        ((3, 1e-3, "all"), r"- unfreeze_layers: Unfrozen backbone layers must be a whole number from 0 to 2"),
    ],
)
def test_non_numeric_finetune_settings_get_a_message(client, settings, message):
    with pytest.raises(Exception, match=message):
        client.predict(*settings, api_name="/finetune")


@pytest.mark.parametrize("index", [999999, 1.5, "../../etc/passwd", -1])
def test_a_bad_example_index_gets_a_message(client, index):
    with pytest.raises(Exception, match="No example"):
        client.predict(index, api_name="/load_test_example")


def test_an_empty_upload_says_empty_file(client, tmp_path):
    from gradio_client import handle_file

    empty = tmp_path / "nothing.jpg"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="nothing.jpg is an empty file"):
        client.predict(handle_file(str(empty)), api_name="/classify")


@pytest.mark.slow
def test_finetune_use_model_and_restore_stay_in_the_session(server, client, photo, tiny_checkpoints):
    from gradio_client import handle_file

    status, *rest = client.predict(1, 1e-3, 0, api_name="/finetune")
    assert status.startswith("**Done.**"), status
    new_name = rest[5]
    message, scratch_header, transfer_header, *_ = client.predict(new_name, api_name="/use_model")
    assert "swapped in" in transfer_header and new_name in transfer_header
    assert new_name in client.predict(handle_file(photo), api_name="/classify")[2]
    # Another session (a new Client) still gets the server's default, and may not use it by name.
    other = new_client(server[0])
    assert new_name not in other.predict(handle_file(photo), api_name="/classify")[2]
    with pytest.raises(Exception, match="no model called"):
        other.predict(new_name, api_name="/use_model")
    assert server[1].registry.path("transfer") == tiny_checkpoints["transfer"]
    client.predict(api_name="/restore_models")
    assert new_name not in client.predict(handle_file(photo), api_name="/classify")[2]
