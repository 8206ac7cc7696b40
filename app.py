"""The web app's entry point, as a Hugging Face Space runs it: `python app.py [--port 7860] ...`.

Everything lives in the `animalcls.webapp` package (`server` parses the arguments, starts
loading the models, then imports Gradio and launches; `layout` builds the Blocks). Importing
this file starts nothing and does not import Gradio. See docs/web-app-and-space.md.
"""

from __future__ import annotations

from animalcls.webapp.server import LAUNCH_OPTIONS, build_demo, import_pyplot, main, parse_args, run

__all__ = ["LAUNCH_OPTIONS", "build_demo", "import_pyplot", "main", "parse_args", "run"]

if __name__ == "__main__":
    run()
