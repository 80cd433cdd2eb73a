"""Pictures of an archive: a thumbnail per slide with its tile grid, and a contact sheet.

Each job draws its slide's thumbnail (tiles coloured by tissue fraction over the slide, with
the tissue outline: :func:`mmpath.pl.tiles`) into ``thumbs/<slide_id>.jpg``;
``mmpath archive status`` assembles the done slides' thumbnails into ``contact_sheet.jpg``,
shown in ``summary.md``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from mmpath import _keys as K
from mmpath.archive import store as S
from mmpath.io._atomic import atomic_path

log = logging.getLogger(__name__)

THUMB_SIZE = 512  # longer side of the slide thumbnail under each picture (px)
THUMB_DPI = 80  # the picture is ~560 px wide
SHEET_CELL = 200  # px per contact-sheet cell (the picture is fitted into it)
SHEET_MAX = 48  # slides on a contact sheet (the first ones by slide id)


def draw_thumbnail(adata, slide, tissue, path: Path) -> None:
    """The slide's tile grid over its thumbnail (coloured by tissue fraction), as a JPEG
    (a PNG of a tissue texture is ~6x larger, and slower to compress)."""
    import matplotlib.pyplot as plt

    from mmpath import pl

    color = K.TISSUE_FRAC if K.TISSUE_FRAC in adata.obs else None
    fig = pl.tiles(adata, slide, color=color, tissue=tissue, max_size=THUMB_SIZE)
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="jpg", dpi=THUMB_DPI, pil_kwargs={"quality": 85})
    finally:
        plt.close(fig)


def contact_sheet(
    store: S.ArchiveStore, status: pd.DataFrame, *, max_slides: int = SHEET_MAX
) -> tuple[Path | None, int]:
    """Write ``contact_sheet.jpg`` from the done slides' thumbnails.

    Returns its path (None when no done slide has a thumbnail) and how many slides it shows.
    """
    from PIL import Image, ImageDraw

    done = status[status.state == S.DONE].sort_values("slide_id")
    pics = [(s, store.thumb_path(s)) for s in done.slide_id]
    pics = [(s, p) for s, p in pics if p.is_file()][:max_slides]
    path = store.root / "contact_sheet.jpg"
    if not pics:
        path.unlink(missing_ok=True)
        return None, 0
    cols = min(6, len(pics))
    rows = math.ceil(len(pics) / cols)
    label = 14
    sheet = Image.new("RGB", (cols * SHEET_CELL, rows * (SHEET_CELL + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (sid, p) in enumerate(pics):
        x, y = (i % cols) * SHEET_CELL, (i // cols) * (SHEET_CELL + label)
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                im.thumbnail((SHEET_CELL - 4, SHEET_CELL - 4))
                sheet.paste(im, (x + (SHEET_CELL - im.width) // 2, y + label))
        except OSError as err:  # a damaged picture: its cell stays empty
            log.warning("cannot read %s (%s)", p, err)
        draw.text((x + 4, y + 1), str(sid)[:28], fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="JPEG", quality=85)
    return path, len(pics)
