"""Progress bars that move wherever the lab runs: a widget in Jupyter, text in a terminal, and in a
notebook executed headless (``CPTLAB_HEADLESS=1``, set by ``cptlab.notebook.execute``) plain text whose
last state, 100%, is what the saved notebook shows."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

HEADLESS = "CPTLAB_HEADLESS"


def progress_bar(total: int, desc: str, initial: int = 0, leave: bool = True):
    if os.environ.get(HEADLESS) == "1":
        return text_tqdm(
            total=total, desc=desc, initial=initial, leave=True, file=sys.stderr, mininterval=2.0, ascii=True
        )
    return auto_tqdm(total=total, desc=desc, initial=initial, leave=leave)
