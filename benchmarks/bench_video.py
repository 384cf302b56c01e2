"""Video -> model input: `load_eval_views` against the reference approach, in the same run.

    python benchmarks/bench_video.py [--repeats 5] [--workdir /tmp/stadapter-bench-video]

Reference approach (the issue's baseline): decode every frame with PyAV, convert every frame to float RGB,
normalize and resize every frame, then pick the 8 and center-crop. Ours: `load_eval_views` (scan the
packets, one sequential decode that converts and transforms only the 8 frames). Both give 8 frames,
1 view, 224x224; the script checks they give the same tensor. Side by side: decord's own seek-and-decode
of the same 8 indices (its fast path), and our exact PyAV path.
Also: DataLoader clips/s (training clips, K400 augmentation)
with 0 and 2 workers. Prints a markdown table; figures are medians over --repeats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.timing import median_ms, time_ms
from stadapter_deploy.video import load_eval_views, prepare_eval_views
from stadapter_deploy.video.dataset import VideoClipDataset
from stadapter_deploy.video.sampling import eval_indices
from stadapter_deploy.video.transforms import normalize, resize, short_side_size, spatial_crops
from stadapter_deploy.video.windows import iter_window_batches


def make_video(
    path: Path, width: int, height: int, seconds: int = 10, fps: int = 30, codec: str = "libx264", options=None
) -> Path:
    """A natural-ish test clip: a drifting color gradient with a moving textured box, yuv420p."""
    if path.exists():
        return path
    options = options if options is not None else {"preset": "veryfast", "crf": "23"}
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    box = rng.integers(0, 256, size=(height // 4, width // 6, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            t = i / fps
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[..., 0] = (128 + 100 * np.sin(xx / width * 6 + t)).astype(np.uint8)
            img[..., 1] = (128 + 100 * np.sin(yy / height * 4 - t)).astype(np.uint8)
            img[..., 2] = ((xx + yy + 40 * i) % 256).astype(np.uint8)
            x = int((width - box.shape[1]) * (0.5 + 0.5 * np.sin(t)))
            y = int((height - box.shape[0]) * (0.5 + 0.5 * np.cos(t)))
            img[y : y + box.shape[0], x : x + box.shape[1]] = box
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


def reference_views(path: Path, num_frames: int = 8, size: int = 224) -> torch.Tensor:
    """The baseline: every frame decoded, converted to float RGB, normalized and resized; then 8 picked."""
    with av.open(str(path)) as container:
        frames = []
        for f in container.decode(video=0):
            image = f.to_ndarray(format="rgb24")[None]
            frames.append(resize(normalize(image), *short_side_size(*image.shape[1:3], size)))  # [3, 1, H', W']
    (picked,) = eval_indices(len(frames), num_frames, 0)
    clip = torch.cat([frames[i] for i in picked], dim=1)  # [3, T, H', W']
    return spatial_crops(clip, size, 1)[0][None]  # [1, 3, T, S, S]


def loader_clips_per_s(path: Path, workers: int, clips: int = 24) -> float:
    pre = Preprocessing(num_frames=8, sampling_rate=16, size=224)
    ds = VideoClipDataset([(path, 0)] * clips, pre, train=True, augment="k400")
    loader = DataLoader(ds, batch_size=4, num_workers=workers)
    (ms,) = time_ms(lambda: sum(len(labels) for _, labels, _ in loader), 1)
    return clips / (ms / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/stadapter-bench-video"),
        help="where the generated test videos are kept between runs",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    w = args.workdir
    videos = {
        "10 s 640x360 H.264 30 fps": make_video(w / "640x360_10s.mp4", 640, 360),
        "10 s 1920x1080 H.264 30 fps": make_video(w / "1920x1080_10s.mp4", 1920, 1080),
        "10 s 640x360 H.264 B-frames, GOP 30": make_video(
            w / "640x360_bf.mp4", 640, 360, options={"preset": "veryfast", "bf": "3", "g": "30"}
        ),
        "10 s 720x480 MPEG-2 (mp4), GOP 15": make_video(
            w / "720x480_mpeg2.mp4", 720, 480, codec="mpeg2video", options={"bf": "2", "g": "15", "qscale": "4"}
        ),
        "120 s 640x360 H.264 no B-frames, GOP 60 (seek path)": make_video(
            w / "640x360_120s.mp4", 640, 360, seconds=120, options={"preset": "ultrafast", "bf": "0", "g": "60"}
        ),
    }
    print(f"torch threads: {args.threads}; medians over {args.repeats} runs\n")
    print(
        "| video | reference (ms) | load_eval_views, exact PyAV (ms) | speed-up | load_eval_views, decord asked (ms) "
        "| decord alone, same 8 frames (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for name, path in videos.items():
        ours = load_eval_views(path)
        if "120 s" not in name:  # the reference holds every frame in memory: skip it on the long video
            torch.testing.assert_close(ours, reference_views(path), rtol=0, atol=1e-5)  # same input, faster
        ref = median_ms(lambda p=path: reference_views(p), args.repeats) if "120 s" not in name else float("nan")
        exact = median_ms(lambda p=path: load_eval_views(p), args.repeats)
        asked = median_ms(lambda p=path: prepare_eval_views(p, decoder="decord").clips, args.repeats)
        alone = median_ms(lambda p=path: decord_frames(p), args.repeats)
        print(f"| {name} | {ref:.0f} | {exact:.0f} | {ref / exact:.1f}x | {asked:.0f} | {alone:.0f} |")
    uhd = make_video(w / "3840x2160_3s.mp4", 3840, 2160, seconds=3, options={"preset": "ultrafast"})
    data, pre = uhd.read_bytes(), Preprocessing()
    timeline = median_ms(lambda: list(iter_window_batches(data, pre)), args.repeats)
    classify = median_ms(lambda: prepare_eval_views(data, pre), args.repeats)
    print("\n| 3 s 3840x2160 H.264 (2 windows of 2 s) | ms |\n|---|---|")
    print(f"| a /classify_timeline's decode (every window, one pass) | {timeline:.0f} |")
    print(f"| a /classify's decode | {classify:.0f} |")
    path = videos["10 s 640x360 H.264 30 fps"]
    rates = {w: loader_clips_per_s(path, w) for w in (0, 2)}
    print("\n| DataLoader (640x360 clip, 8 frames r=16, K400 aug, 224) | clips/s |\n|---|---|")
    for workers, rate in rates.items():
        print(f"| num_workers={workers} | {rate:.1f} |")


def decord_frames(path: Path):
    """decord's fast path on its own: its frame count, then its seek-and-decode of the 8 uniform indices."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=0)
    (picked,) = eval_indices(len(reader), 8, 0)
    return reader.get_batch(picked).asnumpy()


if __name__ == "__main__":
    main()
