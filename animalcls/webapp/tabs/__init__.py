"""One module per tab (or panel of a tab) of the web app, all built the same way:

- a handler class (`ClassifyTab`, `TrainingTab`, `CellView`, `FinetuneTab`) constructed by
  `webapp.handlers.AnimalApp` from the services it uses, passed explicitly (the model registry,
  the sessions, the fine-tune runner, a wait for readiness, temp folders, the operator's settings);
- a `build_*` function, called inside the tab's `gr.Tab`, that lays out the components and wires
  the tab's own events to the handler's methods, each under an explicit api_name, and returns the
  components that `webapp.layout` wires across tabs (use / restore a model, refreshes, page load).

What the handlers show is computed without Gradio in the modules beside this package
(views, answers, lesson, sessions, state).
"""
