"""``mmpath list`` and ``mmpath weights install``."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from mmpath.cli._common import summary
from mmpath.errors import ModelError, WeightsError

log = logging.getLogger(__name__)

COLUMNS = ["name", "kind", "dim", "proj_dim", "input_size", "mpp", "license", "weights", "verified"]


def register(sub) -> None:
    p = sub.add_parser("list", help="list registered encoders (or heads)")
    p.add_argument(
        "what", nargs="?", default="encoders", choices=["encoders", "heads", "slide-encoders"]
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (*)")
    p.add_argument("--sources", action="store_true", help="also show source and aliases")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("weights", help="manage model weights available offline")
    wsub = p.add_subparsers(dest="weights_command", metavar="<action>", required=True)
    q = wsub.add_parser(
        "install", help="copy a downloaded model folder to $MMPATH_HOME/weights/<name>/"
    )
    q.add_argument("name", help="registry name (uni, plip...) or an org/name hub id")
    q.add_argument("folder", help="the downloaded model folder (or a single weights file)")
    q.add_argument("--force", action="store_true", help="replace an installed copy")
    q.set_defaults(func=cmd_weights_install)


def cmd_list(args) -> int:
    if args.what == "heads":
        from mmpath.models import heads

        names = heads.list(args.pattern)
        for name in names:
            print(name)
        summary(args, f"{len(names)} heads")
        return 0
    if args.what == "slide-encoders":
        from mmpath.models.slide_encoders import slide_encoders

        names = slide_encoders.list(args.pattern)
        for name in names:
            print(f"{name}: {slide_encoders.get(name).meta.status}")
        built = sum(slide_encoders.get(n).meta.offline for n in names)
        summary(args, f"{len(names)} slide encoders ({built} built and checked offline)")
        return 0
    from mmpath.cli._catalog import catalog, list_table

    df = list_table(args.pattern)  # models.list_encoders without torch (cached metadata)
    if df.empty:
        summary(args, f"no encoder matches {args.pattern!r}")
        return 0
    cols = COLUMNS + (["aliases", "source"] if args.sources else [])
    view = df[cols].copy()
    view["verified"] = view["verified"].map({True: "yes", False: "never"})
    view.loc[df["weights"] == "random", "verified"] = "n/a"  # test models: random by design
    view.loc[~df["available"], "weights"] = "unavailable"
    print(view.astype(object).where(view.notna(), "-").to_string(index=False))
    real = df[df["weights"] != "random"]
    never = list(real.loc[~real["verified"].astype(bool), "name"])
    if (~df["available"]).any():
        for name in df.loc[~df["available"], "name"]:
            rec = catalog().get(name).meta
            print(f"{name}: unavailable, needs {rec['install'] or rec['requires']}")
    if never:
        print(f"never run on their real weights: {', '.join(never)}")
    summary(args, f"{len(df)} encoders; weights: mmpath weights install <name> <folder>")
    return 0


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def install_name(name: str) -> str:
    """The folder name a ``weights install`` name maps to, refused unless it is safe."""
    from mmpath._names import check_name

    if "/" in name:  # a hub id: use the alias when one is registered, else org--name
        if not _HUB_ID.match(name):
            raise WeightsError(
                f"{name!r} is neither a registry name nor an org/name hub id; "
                "see `mmpath list` for the names"
            )
        from mmpath.cli._catalog import records

        alias = next(
            (r["name"] for r in records() if (r["spec"] or {}).get("hub_id") == name), None
        )
        return check_name(alias or name.replace("/", "--"), what="weights name")
    check_name(name, what="weights name")
    from mmpath.cli._catalog import catalog

    try:
        return catalog().get(name).name  # the registry's names, without torch
    except ModelError:
        log.warning("%r is not a registry name; installing under that name anyway", name)
        return name


def cmd_weights_install(args) -> int:
    from mmpath._weights import weights_dir
    from mmpath.io._atomic import atomic_path

    name = install_name(args.name)  # before any file is touched
    src = Path(args.folder).expanduser()
    if not src.exists():
        raise WeightsError(f"{src} does not exist; pass the folder you downloaded")
    target = weights_dir(name)
    if src.resolve() == target.resolve() or target.resolve() in src.resolve().parents:
        raise WeightsError(f"{src} is the installed folder itself; pass the downloaded folder")
    if target.exists() and any(target.iterdir()) and not args.force:
        raise WeightsError(f"{target} already exists; pass --force to replace it")
    from mmpath.models._verify import verify_weights, write_marker  # torch: real work from here

    checked = verify_weights(name, src)  # refuses a folder that is not these weights
    with atomic_path(target) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp, symlinks=False)
        else:
            tmp.mkdir(parents=True)
            shutil.copy2(src, tmp / src.name)
        write_marker(tmp, name, checked)
    n_files = sum(1 for p in target.rglob("*") if p.is_file()) - 1
    how = "verified" if checked != "tensors" else "readable tensors; not an entry, not verified"
    summary(args, f"installed {n_files} files for {name!r} in {target} ({how}: {checked})")
    return 0
