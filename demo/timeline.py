"""The page's Timeline tab: when things happen in a longer video, as a plot of score over time for the
top classes and a table of the windows below it.

Every Classifier (demo/classifiers.py) has `timeline(video, window_s, progress) -> list[dict]` (segments
as `Segment.to_dict()` gives them: start_s, end_s, labels); this module only draws them. A video past
a service's synchronous limit goes through its task; the page shows how far the task is.
"""

from __future__ import annotations

import gradio as gr

PLOTTED_CLASSES = 3  # the classes with the highest score in any window
TABLE_HEADERS = ["start (s)", "end (s)", "top class", "score", "second class", "score "]


def top_classes(segments: list[dict], count: int = PLOTTED_CLASSES) -> list[str]:
    best: dict[str, float] = {}
    for segment in segments:
        for item in segment["labels"]:
            best[item["label"]] = max(best.get(item["label"], 0.0), item["score"])
    return sorted(best, key=lambda label: -best[label])[:count]


def timeline_figure(segments: list[dict]):
    """Score over time (each window at its middle) for the top classes; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    times = [(s["start_s"] + s["end_s"]) / 2 for s in segments]
    for label in top_classes(segments):
        scores = [next((x["score"] for x in s["labels"] if x["label"] == label), 0.0) for s in segments]
        ax.plot(times, scores, marker="o", markersize=3, label=label)
    ax.set_xlabel("time (s), each window at its middle")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    plt.close(fig)  # gradio renders it; keep pyplot's global state empty
    return fig


def table_rows(segments: list[dict]) -> list[list]:
    rows = []
    for s in segments:
        first, second = (s["labels"] + [{"label": "", "score": float("nan")}] * 2)[:2]
        scores = [round(first["score"], 3), round(second["score"], 3)]
        rows.append([s["start_s"], s["end_s"], first["label"], scores[0], second["label"], scores[1]])
    return rows


def timeline_tab(classifier, make_handler) -> None:
    """The tab's components and event, inside the caller's gr.Blocks; `make_handler` is the page's one
    handler factory (demo/app.py)."""

    async def work(video: str, window: float | None, progress):
        progress(0, desc="decoding and labelling the windows")
        told = lambda words: progress(None, desc=words)
        return await classifier.timeline(video, float(window) if window else None, told)

    def outputs(segments: list[dict]):
        return timeline_figure(segments), table_rows(segments)

    guarded = make_handler(work, outputs, "Upload a video first.")

    async def handler(video: str | None, window: float | None = None, progress=gr.Progress()):  # noqa: B008
        return await guarded(video, window, progress)

    with gr.Tab("Timeline", elem_id="timeline-tab"):
        gr.Markdown(
            "Upload a longer video: a window slides over it and the model labels each window. The plot shows "
            "the score over time of the classes that score highest anywhere; the table lists every window."
        )
        with gr.Row():
            video = gr.Video(label="Video", sources=["upload"], elem_id="timeline-input")
            with gr.Column():
                window = gr.Number(
                    value=0, label="window (s); 0 = the model's default", minimum=0, elem_id="timeline-window"
                )
                button = gr.Button("Timeline", variant="primary", elem_id="timeline-button")
        plot = gr.Plot(label="Score over time", elem_id="timeline-plot")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Windows", elem_id="timeline-table", interactive=False)
        gr.on([button.click, video.upload], handler, inputs=[video, window], outputs=[plot, table], api_name="timeline")
