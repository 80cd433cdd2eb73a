"""``mmpath demo``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled sample; write an HTML report")
    p.add_argument("-o", "--out", default="demo-out", help="output directory (demo-out)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from mmpath.demo import run_demo

    report = run_demo(args.out, quiet=args.quiet)
    print(f"demo report: {report}")
    return 0
