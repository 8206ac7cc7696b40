"""The Classify tab: a photo, both models' answers side by side with the one warning and the
heatmaps, and the example galleries. Its handlers (`ClassifyTab`) read each visitor's models from
their session; what they show is computed in animalcls.webapp.answers and animalcls.webapp.views."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.serving.inference import load_image, top_k
from animalcls.store.checkpoints import KINDS, read_manifest
from animalcls.trust import verdicts as trust
from animalcls.webapp import views
from animalcls.webapp.inputs import UnusableUpload, UploadedImage, checked_examples, user_error
from animalcls.webapp.sessions import SessionModels, session_of
from animalcls.webapp.state import ModelRegistry
from animalcls.webapp.tabs.classify_answers import (
    answer_sides,
    known_classes_markdown,
    scope_thresholds,
    untrusted_note,
    warning_markdown,
)
from animalcls.webapp.temp import TempImages

OVERLAY_SIDE = 448  # overlays are shown about 250 px wide: no need to blend a 12-megapixel photo

# Where the eye should be when the answers come: the top of the answers (the one warning goes
# there). On a phone they sit below the photo and the examples; Gradio 6.31's scroll_to_output
# does not scroll (its status tracker never receives the flag), so the page does it at the click.
SCROLL_TO_ANSWERS_JS = """() => {
    const top = document.querySelector('#scope-banner')?.getBoundingClientRect().top;
    if (top !== undefined && (top < 0 || top > window.innerHeight * 0.6)) {
        window.scrollTo({top: top + window.scrollY - 12, behavior: 'smooth'});
    }
}"""


def image_error(message: str) -> gr.Error:
    return user_error(message, "Not a usable image")


class ClassifyTab:
    """The Classify tab's handlers. `registry` holds the server's default models, `sessions` each
    visitor's choices; `images` writes the heatmap overlays; `wait_for_models` blocks until the
    models are loaded; `examples_dir` holds the freely licensed example photos."""

    def __init__(
        self,
        registry: ModelRegistry,
        sessions: SessionModels,
        images: TempImages,
        wait_for_models: Callable[[], None],
        examples_dir: Path,
    ) -> None:
        self.registry, self.sessions, self.images = registry, sessions, images
        self.wait_for_models, self.examples_dir = wait_for_models, Path(examples_dir)

    def classify(self, image: str | None, show_heatmaps: bool = False, session: Any = None) -> tuple[Any, ...]:
        """Top-5 of each model with its none-of-the-five verdict (one forward pass each), a
        header per side with the time taken, whether they agree, the banner and the heatmaps."""
        if isinstance(image, UnusableUpload):
            raise image_error(str(image))
        if not image:
            raise user_error("Upload a photo first (or pick an example).", "No photo")
        # read once: a swap meanwhile must not mix two models' answers
        sides = self.sessions.snapshot(session_of(session), self.registry.snapshot())
        if not any(folder for folder, _ in sides.values()):
            raise user_error("No checkpoints are available on this server: see the notice at the top.", "No models")
        try:  # decoded once, shrunk to what the largest model needs before any float conversion
            picture = load_image(image, max_side=views.largest_input([folder for folder, _ in sides.values()]))
        except ImageError as exc:
            raise image_error(str(exc)) from None
        self.wait_for_models()
        answers = answer_sides(
            {kind: folder for kind, (folder, _) in sides.items() if folder}, picture, bool(show_heatmaps)
        )
        results: dict[str, tuple[dict[str, float], float] | None] = {}
        outputs: list[Any] = []
        for kind in KINDS:
            folder, swapped = sides[kind]
            header, answer = views.model_header(folder, kind, swapped=swapped), answers.get(kind)
            if isinstance(answer, str):
                header += f"\n\n**This model could not be used:** {html.escape(views.public(answer))}"
                answer = None
            if answer is not None:
                header += "\n\n" + views.timing_line(answer.seconds) + untrusted_note(answer)
            results[kind] = (answer.probabilities, answer.seconds) if answer else None
            outputs += [header, dict(top_k(answer.probabilities, 5)) if answer else None]
        limits = scope_thresholds({kind: folder for kind, (folder, _) in sides.items() if folder})
        extras = trust_outputs(answers, picture, bool(show_heatmaps), self.images, self.class_names(sides), limits)
        # Under a warning the page dims the comparison (PAGE_CSS): it is not repeated here.
        return (*outputs, views.comparison_markdown(results), *extras)

    @staticmethod
    def validate_photo(image: str | None, show_heatmaps: bool = False, session: Any = None) -> list[dict[str, Any]]:
        """The Classify button's validator: without a photo, one message by the photo input
        instead of an error on every output (classify itself still refuses, for API callers)."""
        return [
            gr.validate(bool(image), "Upload a photo first (or click an example below)."),
            gr.validate(True, ""),
            gr.validate(True, ""),
        ]

    def classify_new(self, image: str | None, show_heatmaps: bool = False, session: Any = None) -> tuple[Any, ...]:
        """The photo input, then classify's outputs, after an upload (or a model swap): the
        photo's results; none without a photo; for an unusable upload, the input and results
        cleared and the reason shown once, where the comparison goes."""
        if isinstance(image, UnusableUpload):
            cleared = list(self.clear_results(session))
            cleared[4] = f"**Not a usable image:** {html.escape(image)}"
            return (None, *cleared)
        # The photo as a plain value, not gr.skip(): an update makes Gradio rebuild the input
        # component for the session (its class keeps app_inputs.UploadedImage's checks, but not its value).
        return (image, *(self.classify(image, show_heatmaps, session) if image else self.clear_results(session)))

    def clear_results(self, session: Any = None) -> tuple[Any, ...]:
        return (
            self.header("scratch", session),
            None,
            self.header("transfer", session),
            None,
            "",
            *cleared_trust_outputs(),
        )

    def known_classes(self, session: Any = None) -> str:
        """Which animals this session's models know (a taught animal included)."""
        return known_classes_markdown(self.sessions.paths(session_of(session)))

    def class_names(self, sides: dict[str, tuple[Path | None, bool]] | None = None) -> list[str]:
        """The class names of the transfer (else scratch) model, from `sides` (one snapshot) when given."""
        sides = sides if sides is not None else self.registry.snapshot()
        for kind in ("transfer", "scratch"):
            folder = sides.get(kind, (None, False))[0]
            if folder is not None:
                try:
                    return list(read_manifest(folder)["class_names"])
                except AnimalclsError:
                    continue
        return []

    def header(self, kind: str, session: Any = None) -> str:
        """A side's header, "swapped in" judged as classify judges it (one snapshot: the
        server's original models, this session's choices on top)."""
        folder, swapped = self.sessions.snapshot(session_of(session), self.registry.snapshot())[kind]
        return views.model_header(folder, kind, swapped=swapped)

    def example_photos(self) -> tuple[list[str], list[str]]:
        """Test-split photos of each checkpoint's dataset (when on this machine), and the
        freely licensed photos shipped in examples/."""
        folders = [self.registry.path(kind) for kind in ("transfer", "scratch")]
        return views.held_out_photos(folders), views.folder_photos(self.examples_dir)


def trust_outputs(
    answers: dict[str, trust.Answer | str],
    picture: Any,
    heatmaps: bool,
    images: TempImages,
    class_names: Sequence[str],
    limits: Mapping[str, float] | None = None,
) -> tuple[Any, ...]:
    """(banner, verdict for the API, scratch heatmap, transfer heatmap)."""
    answered = {k: a for k, a in answers.items() if isinstance(a, trust.Answer)}
    banner = warning_markdown(answered, class_names, limits or {})
    checked = [a.out_of_scope for a in answered.values() if a.out_of_scope is not None]
    verdict = {"out_of_scope": any(checked) if checked else None, **{k: a.to_json() for k, a in answered.items()}}
    return (banner, verdict, *(_heatmap(kind, answered.get(kind), picture, heatmaps, images) for kind in KINDS))


def _heatmap(kind: str, answer: trust.Answer | None, picture: Any, heatmaps: bool, images: TempImages) -> Any:
    if not heatmaps or answer is None:
        return gr.update(value=None, visible=False)
    if answer.heatmap is None:
        return gr.update(value=None, visible=True, label=f"{views.side_title(kind)}: no heatmap for this model")
    from animalcls.trust.explain import overlay

    small = picture.copy()
    small.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    label = f"{views.side_title(kind)}: where it looked for “{answer.label}”"
    return gr.update(value=images.overlay(overlay(small, answer.heatmap)), visible=True, label=label)


def cleared_trust_outputs() -> tuple[Any, ...]:
    return ("", None, *(gr.update(value=None, visible=False) for _ in KINDS))


def build_classify_tab(tab: ClassifyTab, session: gr.State) -> dict[str, Any]:
    """The tab's components and events, inside the current gr.Tab. Returns what the layout wires
    across tabs: the headers (`info`), the outputs and the `refresh` event (classify again after a swap)."""
    info, labels, heatmaps = {}, {}, {}
    known = gr.Markdown(tab.known_classes(), elem_id="known-classes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            image = UploadedImage(
                sources=["upload", "webcam", "clipboard"],
                type="filepath",
                image_mode=None,
                label="Your photo",
                elem_id="classify-image",
                height=320,
            )
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            show_heatmaps = gr.Checkbox(
                False, label="Show where each model looked (heatmaps)", elem_id="heatmap-toggle"
            )
        with gr.Column(scale=3):
            banner = gr.Markdown(elem_id="scope-banner")  # the one warning, where the answers appear
            with gr.Row(equal_height=False):
                for kind in KINDS:
                    with gr.Column(min_width=240, elem_classes=["result-side"]):
                        info[kind] = gr.Markdown(tab.header(kind), elem_id=f"info-{kind}")
                        labels[kind] = gr.Label(
                            num_top_classes=5,
                            label=f"{views.side_title(kind)}: how sure",
                            show_label=False,
                            elem_id=f"label-{kind}",
                            elem_classes=["result-label"],
                        )
            # Their own row, so the two pictures line up whatever the headers above them say.
            with gr.Row(equal_height=True):
                for kind in KINDS:
                    heatmaps[kind] = gr.Image(
                        type="filepath",
                        visible=False,
                        interactive=False,
                        elem_id=f"heatmap-{kind}",
                        elem_classes=["heatmap"],
                        buttons=["fullscreen"],
                        min_width=200,
                    )
            verdict = gr.Markdown(elem_id="verdict")
            scope_verdict = gr.JSON(visible=False, label="none-of-the-five verdict", elem_id="scope-verdict")
    outputs = [
        info["scratch"],
        labels["scratch"],
        info["transfer"],
        labels["transfer"],
        verdict,
        banner,
        scope_verdict,
        heatmaps["scratch"],
        heatmaps["transfer"],
    ]
    events = dict(
        fn=tab.classify,
        inputs=[image, show_heatmaps, session],
        outputs=outputs,
        concurrency_id="classify",
        concurrency_limit=2,
    )
    # After an upload, a model swap or the heatmap toggle: the photo (cleared when unusable) and its results, or none.
    refresh = {**events, "fn": tab.classify_new, "outputs": [image, *outputs]}
    # A missing photo is one message by the photo (the validator), not an error on every output.
    # The page scrolls to the answers (and the warning above them) when they come: on a phone
    # they are below the photo and the examples.
    button.click(api_name="classify", validator=tab.validate_photo, **events)
    button.click(None, js=SCROLL_TO_ANSWERS_JS, api_name="show_answers", api_visibility="private")
    # Turning the heatmaps on or off answers the photo on the page again.
    show_heatmaps.change(api_name="reclassify_heatmaps", api_visibility="undocumented", **refresh)
    # A new photo first clears the previous answer (so an error never sits above stale
    # results), then is classified; removing the photo just clears.
    gr.on(
        [image.upload, image.clear],
        tab.clear_results,
        session,
        outputs,
        api_name="clear_results",
        api_visibility="undocumented",
        queue=False,
        show_progress="hidden",
    ).then(api_name="classify_upload", api_visibility="undocumented", **refresh)
    test_photos, user_photos = tab.example_photos()
    galleries = (
        # The shipped photos first: on a Space (no dataset) they are the only ones. Thumbnails,
        # captioned by the page's style (views.page_css) from their file names.
        (user_photos, "user", "Examples: click one (freely licensed photos, credited in the app's files)"),
        (test_photos, "test", "Photos from the test split of the models' dataset (never used in training)"),
    )
    for photos, name, label in galleries:
        if photos:
            examples = checked_examples(
                gr.Examples(
                    [[p] for p in photos],
                    inputs=image,
                    label=label,
                    examples_per_page=20,
                    cache_examples=False,
                    api_name=f"load_{name}_example",
                    api_visibility="undocumented",
                    elem_id=f"examples-{name}",
                )
            )
            # Clicking a photo loads it, then classifies it (in the same concurrency group).
            examples.load_input_event.then(api_name=f"classify_{name}_example", api_visibility="undocumented", **events)
            examples.dataset.click(
                None, js=SCROLL_TO_ANSWERS_JS, api_name=f"show_{name}_answers", api_visibility="private"
            )
    return {
        "image": image,
        "info": info,
        "known": known,
        "labels": labels,
        "verdict": verdict,
        "banner": banner,
        "heatmaps": heatmaps,
        "refresh": refresh,
    }
