"""``mmpath serve``: the search web page over an index (argument plumbing over
:mod:`mmpath.serve`)."""

from __future__ import annotations

from mmpath.cli._common import parse_remap, remap_arg
from mmpath.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a search page (text/image queries, gallery, slide viewer) over an index",
    )
    p.add_argument("index", help="index directory (from `mmpath index build`)")
    p.add_argument("--encoder", default=None, help="encoder for queries (default: the index's)")
    p.add_argument("--weights", default=None, help="weights for --encoder")
    remap_arg(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything else is reachable from the network)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="if INDEX does not exist, build the demo index there from the bundled sample",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from pathlib import Path

    from mmpath import serve

    if args.demo:
        serve.demo_index(args.index)
    elif not Path(args.index).exists():
        raise ConfigError(
            f"index {args.index!r} does not exist; build one with `mmpath index build` "
            "(or pass --demo to build the demo index there)"
        )
    serve.run(
        args.index,
        encoder=args.encoder,
        weights=args.weights,
        remap=parse_remap(args.remap),
        host=args.host,
        port=args.port,
    )
    return 0
