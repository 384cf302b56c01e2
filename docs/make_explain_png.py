"""Draw the README's heatmap picture: Predictor.explain on a synthetic clip, rendered to docs/explain.png.

Without --bundle it uses the synthetic recipe's model: `python -m train synthetic --save-dir runs/synthetic`
runs first unless runs/synthetic/final exists (a few minutes on 2 CPU cores), then that model is exported
to a temporary bundle. The clip is synthetic validation clip --clip (number 25, moving right, by default),
written fresh, so the picture is the same for the same model.

    python docs/make_explain_png.py
    python docs/make_explain_png.py --bundle runs/quickstart/bundle --video clip.mp4 --out explain.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_bundle(folder: Path, save_dir: Path) -> Path:
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source

    if not (save_dir / "final").is_dir():
        from train.cli import main as train

        if train(["synthetic", "--save-dir", str(save_dir)]) != 0:
            raise SystemExit("training failed")
    options = ExportOptions(progress=False, check_videos=1, check_random=1)
    return export_bundle(load_source(checkpoint=save_dir / "final"), folder / "bundle", options).path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a model bundle (default: the synthetic recipe's model)")
    p.add_argument("--save-dir", type=Path, default=ROOT / "runs" / "synthetic", help="where the recipe trains")
    p.add_argument("--video", type=Path, help="the video to explain (default: a synthetic validation clip)")
    p.add_argument("--clip", type=int, default=25, help="which synthetic val clip (class: CLIP mod 6; 25 moves right)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "explain.png")
    p.add_argument("--tile", type=int, default=128, help="pixels per frame in the picture")
    args = p.parse_args()

    from stadapter_deploy import load_predictor
    from stadapter_deploy.runtime.explain import render_explanation
    from stadapter_deploy.video.synthetic import clip_seed, write_motion_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or synthetic_bundle(tmp, args.save_dir)
        video = args.video or write_motion_video(tmp / "clip.mp4", args.clip % 6, clip_seed("val", args.clip))
        explanation = load_predictor(bundle).explain(video)
        args.out.write_bytes(render_explanation(explanation, tile=args.tile))
    print(f"{args.out}: {explanation.label} ({explanation.score:.1%}), frames {explanation.frame_indices}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
