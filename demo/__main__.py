"""`python -m demo --bundle BUNDLE`: the Gradio page over a model bundle or a running BentoML service."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from stadapter_deploy.settings import nested, read_settings, setting
from stadapter_deploy.video.limits import DecodeLimits

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m demo",
        description="Gradio page: upload a video, see the top-5 classes, the frames the model looked at, "
        "and the per-stage timings.",
    )
    p.add_argument("--bundle", help="model bundle directory from stadapter-export (needed unless --service)")
    p.add_argument(
        "--backend",
        help="predictor backend for --bundle: auto, torch, onnxruntime, tensorrt (default: auto)",
    )
    p.add_argument(
        "--views",
        type=int,
        help="clips per video for --bundle (default: the bundle's recipe, e.g. 3 temporal views for K400)",
    )
    p.add_argument(
        "--service",
        metavar="URL",
        help="classify through a running BentoML service (e.g. http://127.0.0.1:3000), not in this process",
    )
    p.add_argument(
        "--token",
        help="the service's API token, for --service (default: $STADAPTER_API_TOKEN); sent as a Bearer header",
    )
    p.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="ask visitors to log in (default: $STADAPTER_DEMO_AUTH; with only $STADAPTER_API_TOKEN set, any "
        "user name and the token as the password). Use it before putting the page on a network.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (default: off)")
    return p.parse_args(argv)


def options_problem(args: argparse.Namespace) -> str | None:
    """Why these options do not go together, in one line; None when they do."""
    if not args.bundle and not args.service:
        return "give --bundle BUNDLE (classify in this process) or --service URL (through a running service)"
    model_options = [f"--{name}" for name in ("bundle", "backend", "views") if getattr(args, name) is not None]
    if args.service and model_options:
        return (
            f"--service classifies with the service's own model, so {', '.join(model_options)} would be ignored: "
            "drop them, or drop --service to classify in this process"
        )
    if args.token and not args.service:
        return "--token is the token of a service: it goes with --service URL"
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why the demo cannot listen on host:port, checked before the model loads; None when it can."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


@dataclass(frozen=True)
class DemoSettings:
    auth: str | None = setting(None, "STADAPTER_DEMO_AUTH", "`user:password` visitors log in with", secret=True)
    api_token: str | None = setting(None, "STADAPTER_API_TOKEN", "the service's API token", secret=True)
    decode: DecodeLimits = nested(DecodeLimits)


def page_login(args: argparse.Namespace, settings: DemoSettings):
    """Gradio's `auth=` for the page: --auth, else $STADAPTER_DEMO_AUTH, else the API token; None: open."""
    from .classifiers import token_login, user_login

    pair = args.auth or settings.auth
    if pair:
        return [user_login(pair)]
    return token_login(settings.api_token) if settings.api_token else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if problem := options_problem(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if problem := port_problem(args.host, args.port):
        print(f"error: cannot listen on {args.host}:{args.port} ({problem}); pick another with --port", file=sys.stderr)
        return 2
    from .app import build_demo, example_videos
    from .classifiers import LocalClassifier, ServiceClassifier

    try:
        settings = read_settings(DemoSettings)
        auth = page_login(args, settings)
        if args.service:
            classifier = ServiceClassifier(args.service, token=args.token or settings.api_token)
            if (refused := classifier.probe()) is not None:
                if refused.code == "unauthorized":  # nothing will classify: say so now, in one line
                    print(f"error: {refused}", file=sys.stderr)
                    return 2
                print(
                    f"warning: {refused} The page starts anyway; it classifies, and names the model, once the "
                    "service answers.",
                    file=sys.stderr,
                )
            subtitle = classifier.describe  # asked again on each page load: the service may come up later
        else:
            classifier = LocalClassifier(
                args.bundle, backend=args.backend or "auto", views=args.views, limits=settings.decode
            )
            predictor = classifier.predictor  # load now: a bad bundle fails here, with its reason
            predictor.view_layout(args.views)  # and so does a --views this model cannot use
            for example in example_videos()[:1]:
                classifier.warm_up(example)
            subtitle = f"Model `{predictor.model_name}` on `{predictor.backend}`, in this process"
    except (ValueError, OSError) as e:  # STAdapterError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_demo(classifier, subtitle=subtitle)
    demo.queue(default_concurrency_limit=2)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            auth=auth,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as e:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); pick another with --port", file=sys.stderr)
        return 2
    print(f"Demo running at {demo.local_url}  (Ctrl+C to stop)", flush=True)
    if demo.share_url:
        print(f"Public link: {demo.share_url}", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
