"""Reliability of the app run as a Space: a fresh `git clone` of HEAD, an empty HOME, no
../shared beside it, `python app.py` driven through gradio_client.

* first: --starts fresh processes; the first /classify is sent as soon as the page answers
  (within a second of it); counts how many of them answered.
* memory: one visitor chains --chain head-only fine-tunes on the stored features, uses each and
  classifies with it; prints the app's resident memory after each, and the growth after the second.
* visitors: visitor X fine-tunes and uses the result; visitor Y then runs --others fine-tunes (more
  than the store keeps); X's classify must still name X's model, and X's *Use this model* still work.

    python benchmarks/bench_space_reliability.py first [--starts 10]
    python benchmarks/bench_space_reliability.py memory [--chain 10]
    python benchmarks/bench_space_reliability.py visitors [--others 6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from animalcls.webapp.space import AppNotServing, free_port, space_environment, wait_until_serving

REPO = Path(__file__).resolve().parents[1]


def clone(work: Path) -> Path:
    target = work / "app"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    return target


@contextmanager
def space(app_dir: Path, work: Path) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """(url, process, seconds from spawn to the first HTTP 200) of app.py run as a Space."""
    home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
    port = free_port()
    env = space_environment(home, port)
    log = open(work / f"app-{port}.log", "w")
    spawned = time.monotonic()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_until_serving(url, process)
        except AppNotServing as exc:
            raise SystemExit(str(exc)) from None
        yield url, process, time.monotonic() - spawned
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_requests(app_dir: Path, work: Path, starts: int) -> None:
    from gradio_client import Client, handle_file

    photo = handle_file(str(app_dir / "examples" / "cat-chelsea.jpg"))
    good = 0
    for n in range(starts):
        with space(app_dir, work) as (url, _, page_after):
            start = time.monotonic()
            try:
                client = Client(url, verbose=False, httpx_kwargs={"timeout": 60})
                sent_after = time.monotonic() - start
                answer = client.predict(photo, api_name="/classify")
                ok = answer[3]["label"] == "cat"
                client.close()
            except Exception as exc:  # noqa: BLE001 - counted and shown
                ok, sent_after = False, time.monotonic() - start
                print(f"  failed: {type(exc).__name__}: {str(exc)[:200]}")
            good += ok
            print(
                f"start {n + 1}: page after {page_after:.1f} s, classify sent {sent_after:.2f} s after the page, "
                f"{'ok' if ok else 'FAILED'}",
                flush=True,
            )
    print(f"first classify within a second of the page: {good}/{starts} answered")


def chained_memory(app_dir: Path, work: Path, chain: int) -> None:
    from gradio_client import Client, handle_file

    photo = handle_file(str(app_dir / "examples" / "elephant-african.jpg"))
    with space(app_dir, work) as (url, process, _):
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        client.predict(photo, api_name="/classify")
        sizes = [rss_mb(process.pid)]
        print(f"after the first classify: {sizes[0]:.0f} MB", flush=True)
        for n in range(chain):
            status, *rest = client.predict(1, 1e-3, 0, api_name="/finetune")
            assert status.startswith("**Done.**"), status
            name = rest[5]
            client.predict(name, api_name="/use_model")
            header = client.predict(photo, api_name="/classify")[2]
            assert name in header, header
            sizes.append(rss_mb(process.pid))
            print(f"fine-tune {n + 1} ({len(name)} chars) used: {sizes[-1]:.0f} MB", flush=True)
        stored = sorted(p.name for p in (app_dir / "runs" / "finetunes").iterdir())
        print(f"stored fine-tunes: {len(stored)}")
        print(f"growth after the second: {sizes[-1] - sizes[2]:+.0f} MB ({sizes[2]:.0f} -> {sizes[-1]:.0f} MB)")


def finetune_and_use(client, photo) -> str:
    status, *rest = client.predict(1, 1e-3, 0, api_name="/finetune")
    assert status.startswith("**Done.**"), status
    client.predict(rest[5], api_name="/use_model")
    return rest[5]


def other_visitors(app_dir: Path, work: Path, others: int) -> None:
    from gradio_client import Client, handle_file

    photo = handle_file(str(app_dir / "examples" / "cat-chelsea.jpg"))
    with space(app_dir, work) as (url, _, _):
        visitor_x = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        visitor_y = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        mine = finetune_and_use(visitor_x, photo)
        print(f"X uses {mine}", flush=True)
        for n in range(others):
            theirs = finetune_and_use(visitor_y, photo)
            header = visitor_x.predict(photo, api_name="/classify")[2]
            print(f"Y's fine-tune {n + 1} ({theirs}): X's classify names X's model: {mine in header}", flush=True)
        stored = sorted(p.name for p in (app_dir / "runs" / "finetunes").iterdir())
        again = visitor_x.predict(mine, api_name="/use_model")
        print(f"stored fine-tunes: {len(stored)}; X's model kept: {mine in stored}")
        print(f"X's Use this model again: {again!r}"[:400])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("first", "memory", "visitors"))
    parser.add_argument("--others", type=int, default=6)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--chain", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-space-"))
    app_dir = clone(work)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"clone of {commit.stdout.strip()} in {work}")
    if args.what == "first":
        first_requests(app_dir, work, args.starts)
    elif args.what == "memory":
        chained_memory(app_dir, work, args.chain)
    else:
        other_visitors(app_dir, work, args.others)


if __name__ == "__main__":
    main()
