"""Progress bars on stderr (tqdm), switched off for --quiet and where stderr is no terminal."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """A bar on stderr where it is a terminal; none where it is a file or a pipe (a bar's carriage
    returns and escape codes would garble a log: there the commands' own lines, one an epoch, say how
    far they are)."""
    return tqdm(iterable, disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True, leave=False,
                **kwargs)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:  # to 10 s: a short grid's estimate is compared with its time
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes:.0f} min {rest:.0f} s" if rest else f"{minutes:.0f} min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_size(size: float) -> str:
    """Bytes as a person reads them: 684 MB, 2.0 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size:.0f} bytes"
