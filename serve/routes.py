"""`python -m serve.routes [--json]`: every route the service serves, with its guard, limit and auth.

The app is built in this process as `bentoml serve` builds it (same settings, from the environment), and
its route table is the one the guard reads (serve/guard.py, `route_table`): what is listed is what is
served, mounted page included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings


def served_routes():
    """The RouteInfo of every route of the service's ASGI app, with the settings it was built with."""
    warnings.simplefilter("ignore")  # Gradio's and FastAPI's deprecation notes
    from _bentoml_impl.server.app import ServiceAppFactory

    import serve.service as service
    from serve.guard import route_table

    service.STAdapter.inject_config()
    app = ServiceAppFactory(service.STAdapter, is_main=True)().build_middleware_stack()
    settings = service.SETTINGS
    login = ("/ui",) if settings.ui else ()
    return route_table(app, service.STAdapter, settings.max_videos, bool(settings.api_token), login), settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.routes", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per route instead of a table")
    args = parser.parse_args(argv)
    routes, settings = served_routes()
    if args.json:
        for route in routes:
            print(json.dumps({**dataclasses.asdict(route), "takes_body": route.takes_body}))
        return 0
    limit = f"body <= {settings.max_upload_mb:g} MB within {settings.body_timeout_s:g} s"
    print("| route | methods | guard | auth |\n|---|---|---|---|")
    for r in routes:
        if r.upload is not None:
            form = f"upload form: `{r.upload.file_field}` (<= {r.upload.max_files}), {', '.join(r.upload.fields[1:])}"
            guard = f"{form}; {limit}"
        else:
            guard = limit if r.takes_body else "no body expected; any body: " + limit
        print(f"| `{r.path}` | {', '.join(r.methods)} | {guard} | {r.auth} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
