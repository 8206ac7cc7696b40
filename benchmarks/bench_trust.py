"""What trusting an answer costs: per bundled model, one forward pass alone vs the same pass
plus the none-of-the-five verdict, plus Grad-CAM, plus the overlay file the app serves; then
the app's whole Classify handler with the heatmaps off and on. Batch 1, median of N rounds,
all rows measured in one run (compare the ratios).

    python benchmarks/bench_trust.py [--rounds 15] [--engine auto|onnx|tf]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, rounds: int) -> float:
    fn()  # warm-up (tracing, first allocation)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--engine", default=None)
    args = parser.parse_args()

    from animalcls.data.preprocessing import to_model_input
    from animalcls.serving.inference import load_image, load_predictor
    from animalcls.store import checkpoints
    from animalcls.trust import verdicts as trust
    from animalcls.trust.explain import overlay

    photo = load_image(REPO / "examples" / "cat-chelsea.jpg")
    pair = checkpoints.default_pair()
    judges = {kind: trust.Judge(load_predictor(pair[kind], args.engine)) for kind in ("transfer", "scratch")}
    imagenet = judges["transfer"].answer([photo])[1]  # what the app lends scratch's detector
    out = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    print(
        f"engine: {judges['transfer'].predictor.engine}; photo {photo.width}x{photo.height}; "
        f"median of {args.rounds} rounds, batch 1\n"
    )
    print("| model | forward pass only | + verdict (scope) | + Grad-CAM | + overlay file (448 px JPEG) |")
    print("|---|---|---|---|---|")
    for kind, judge in judges.items():
        predictor = judge.predictor
        lent = imagenet if judge.needs_imagenet else None
        batch = to_model_input(photo, predictor.image_size)[None]
        forward = median_ms(lambda p=predictor, b=batch: p.forward(b), args.rounds)
        verdict = median_ms(lambda j=judge, lent=lent: j.answer([photo], lent), args.rounds)
        heatmap = median_ms(lambda j=judge, lent=lent: j.answer([photo], lent, heatmaps=True), args.rounds)

        def with_file(judge=judge, lent=lent) -> None:
            answer = judge.answer([photo], lent, heatmaps=True)[0][0]
            small = photo.copy()
            small.thumbnail((448, 448))
            overlay(small, answer.heatmap).save(out / "o.jpg", quality=90)

        full = median_ms(with_file, args.rounds)
        cells = [f"{v:.1f} ms ({v / forward:.2f}x)" for v in (forward, verdict, heatmap, full)]
        print(f"| {kind} ({predictor.image_size} px) | " + " | ".join(cells) + " |")

    import app

    handlers = app.build_demo(pair["scratch"], pair["transfer"], use_hub=False).animalcls_app
    image = str(REPO / "examples" / "cat-chelsea.jpg")
    off = median_ms(lambda: handlers.classify_tab.classify(image, False), args.rounds)
    on = median_ms(lambda: handlers.classify_tab.classify(image, True), args.rounds)
    print("\n| app Classify handler (both models, decode included) | heatmaps off | heatmaps on |")
    print("|---|---|---|")
    print(f"| median | {off:.0f} ms (1x) | {on:.0f} ms ({on / off:.2f}x) |")


if __name__ == "__main__":
    main()
