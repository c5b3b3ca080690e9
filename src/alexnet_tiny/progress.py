"""Progress bars on stderr (tqdm), switched off for --quiet and when not wanted."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:  # to 10 s: a short grid's estimate is compared with its time
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes:.0f} min {rest:.0f} s" if rest else f"{minutes:.0f} min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
