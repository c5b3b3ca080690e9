"""Progress bars on stderr (tqdm), switched off for --quiet and when not wanted."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
