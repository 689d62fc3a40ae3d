"""The tiny preset's English: the Wikipedia article sample inside the gensim wheel, read with
gensim's wiki tools, cleaned, and written once as JSON-lines files (so it loads through
``load_dataset('json')``, the same call as a hub corpus). Every 10th article is held out, whole,
for the English evaluation set; the others are the base model's pre-training and replay text."""

from __future__ import annotations

import bz2
import glob
import json
import os
import re
from pathlib import Path

from cptlab.core.cache import cache_root, fingerprint
from cptlab.core.config import DataSource
from cptlab.core.files import atomic_dir, build_lock, is_complete

HELDOUT_EVERY = 10  # article i is held out for evaluation when i % 10 == 9


def gensim_wiki_sample() -> Path:
    try:
        import gensim
    except ImportError:
        raise ImportError("the tiny preset reads its English from the gensim wheel: pip install gensim") from None
    pattern = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "enwiki-latest-pages-articles1*.bz2")
    found = sorted(glob.glob(pattern))
    if not found:
        raise FileNotFoundError(
            f"no Wikipedia sample matches {pattern}: reinstall gensim (pip install --force-reinstall gensim)"
        )
    return Path(found[0])


def _clean_wikitext(text: str) -> str:
    text = text.replace("'''", "").replace("''", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def english_articles() -> list[dict]:
    """Cleaned articles of the sample, redirects and stubs dropped, in file order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out = []
    with bz2.open(gensim_wiki_sample()) as fh:
        for title, text, _pageid in extract_pages(fh):
            if text.lstrip().upper().startswith("#REDIRECT"):
                continue
            clean = _clean_wikitext(filter_wiki(text))
            if len(clean) >= 500:
                out.append({"title": title, "text": clean})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def data_dir() -> Path:
    """The tiny preset's English as JSON-lines files, so they load with ``load_dataset('json')``."""
    sample = gensim_wiki_sample()
    folder = cache_root() / f"tiny-data-{fingerprint(sample.name, sample.stat().st_size, HELDOUT_EVERY, 'v1')}"
    if is_complete(folder):
        return folder
    with build_lock(folder):
        if is_complete(folder):
            return folder
        arts = english_articles()
        with atomic_dir(folder) as tmp:
            _write_jsonl(
                tmp / "english_train.jsonl", [a for i, a in enumerate(arts) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
            )
            _write_jsonl(
                tmp / "english_eval.jsonl", [a for i, a in enumerate(arts) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
            )
    return folder


def english_eval_source() -> DataSource:
    return DataSource(
        kind="hf", path="json", data_files=str(data_dir() / "english_eval.jsonl"), split="train", field="text"
    )


def english_train_source() -> DataSource:
    return DataSource(
        kind="hf", path="json", data_files=str(data_dir() / "english_train.jsonl"), split="train", field="text"
    )
