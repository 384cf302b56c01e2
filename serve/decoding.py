"""What a decode worker process runs: the video pipeline and the preprocessing, nothing else.

Kept apart from serve/service.py so that a worker process imports neither BentoML, the bundle's
model, onnxruntime nor gradio: only the video pipeline.
"""

from __future__ import annotations


def make_decoder(preprocessing: dict):
    """Runs once in each decode process: cap its memory, one torch thread, then decode jobs."""
    import torch

    from stadapter_deploy.preprocessing import Preprocessing
    from stadapter_deploy.video import prepare_eval_views
    from stadapter_deploy.video.limits import MEMORY_ENV, VideoTooLargeError, limit_process_memory

    limit_process_memory()  # no file, whatever its tricks, can take the machine's memory
    torch.set_num_threads(1)
    pre = Preprocessing.from_dict(preprocessing)

    def decode(path: str, views: int | None) -> dict:
        try:
            ev = prepare_eval_views(path, pre.with_views(views))
        except MemoryError:  # the cap above, hit by this file: the same file would hit it again
            raise VideoTooLargeError(
                f"decoding it needs more memory than a decode worker may use (set {MEMORY_ENV} to change the cap)"
            ) from None
        return {
            "clips": ev.clips.numpy(),  # [V, 3, T, S, S]
            "frame_indices": ev.frame_indices,
            "timings_ms": {k: float(v) for k, v in ev.timings_ms.items()},
        }

    return decode
