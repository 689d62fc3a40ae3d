"""Where models, tokenizers and corpora come from: a hub id or a local path, through the
same Hugging Face calls (``from_pretrained``, ``load_dataset``) for every preset."""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

from cptlab.core.config import DataSource
from cptlab.data.wiki_sample import english_eval_source, english_train_source


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


class AssetNotFoundError(FileNotFoundError):
    """A model, tokenizer or dataset could not be found; the message says where we looked."""


def _where_we_looked() -> str:
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    hub = os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))
    ds = os.environ.get("HF_DATASETS_CACHE", os.path.join(home, "datasets"))
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    return (
        f"looked in the Hugging Face cache (HF_HOME={home}, HF_HUB_CACHE={hub}, HF_DATASETS_CACHE={ds}; "
        f"HF_HUB_OFFLINE={offline}) and, if online, on the hub"
    )


def _missing(what: str, exc: Exception) -> AssetNotFoundError:
    return AssetNotFoundError(
        f"could not load {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        f"  {_where_we_looked()}.\n"
        f"  Fix: put it in that cache (or point HF_HOME at a cache that has it), pass a local folder, "
        f"or run the embedded default that needs no network: `cptlab run --preset tiny`."
    )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_unsafe_model_folder(p: Path) -> None:
    """A local model folder is loaded only if it is a plain GPT-2 in safetensors: no custom code
    (``auto_map`` or Python files), no pickles, no symlinked files."""
    config = p / "config.json"
    if not config.is_file() or config.is_symlink():
        raise AssetNotFoundError(f"model folder {p} has no config.json: pass a folder written by save_pretrained")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise ValueError(f"model folder {p}: config.json is not valid JSON") from None
    if not isinstance(cfg, dict) or cfg.get("auto_map") or any(p.glob("*.py")):
        raise ValueError(
            f"model folder {p} asks to run custom code (auto_map or .py files): refused, only GPT-2 folders load"
        )
    if cfg.get("model_type") != "gpt2":
        raise ValueError(f"model folder {p} is a {cfg.get('model_type')!r} model: the lab loads GPT-2 models only")
    if any(f.suffix in PICKLE_SUFFIXES for f in p.iterdir()):
        raise ValueError(f"model folder {p} holds pickled files: refused, weights must be safetensors")
    if any(f.is_symlink() for f in p.iterdir()):
        raise ValueError(f"model folder {p} holds symbolic links: refused")


def load_model(name_or_path: str):
    from transformers import AutoModelForCausalLM

    p = Path(name_or_path)
    if p.exists() and p.is_dir() and not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise AssetNotFoundError(
            f"model folder {p} holds no weights (*.safetensors): re-create it or point at another folder"
        )
    if p.is_dir():
        refuse_unsafe_model_folder(p)
    elif p.is_absolute() or name_or_path.startswith("."):
        raise AssetNotFoundError(
            f"model folder {p} does not exist: pass a folder written by save_pretrained, or a hub id in the cache"
        )
    try:
        # never a pickle, never the folder's own code
        return AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _missing(f"model {name_or_path!r}", exc) from None


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _missing(f"tokenizer {name_or_path!r}", exc) from None
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no EOS token; the CPT corpus joins documents with it")
    return tok


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_TEST_PARTS = {"test", "tests", "idle_test"}


def python_files(root: Path, exclude_tests: bool = True) -> list[Path]:
    """Sorted ``.py`` files under root, skipping site-packages and (optionally) test folders."""
    files = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).parts
        if "site-packages" in rel or "dist-packages" in rel or "__pycache__" in rel:
            continue
        if exclude_tests and (_TEST_PARTS & set(rel[:-1]) or rel[-1].startswith("test_")):
            continue
        if f.is_file():
            files.append(f)
    return files


def read_python_dir(root: str | os.PathLike | None, exclude_tests: bool = True) -> tuple[list[str], dict]:
    """Every readable UTF-8 ``.py`` file under root as one document; binary and non-UTF-8 files
    are skipped and counted rather than fatal."""
    root_path = stdlib_dir() if root is None else Path(root)
    if not root_path.is_dir():
        raise AssetNotFoundError(
            f"code folder {root_path} does not exist or is not a folder: pass --code-dir with a folder of .py files"
        )
    files = python_files(root_path, exclude_tests)
    good, skipped = [], 0
    for f in files:
        raw = f.read_bytes()
        if b"\x00" in raw:
            skipped += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            good.append(str(f))
    if not good:
        raise ValueError(
            f"no usable .py files under {root_path} ({len(files)} found, {skipped} binary or not UTF-8): "
            f"point --code-dir at a folder that holds Python source"
        )
    from datasets import load_dataset

    _quiet_datasets()
    ds = load_dataset("text", data_files=good, sample_by="document", split="train")
    docs = [t for t in ds["text"] if t.strip()]
    return docs, {"root": str(root_path), "files": len(files), "used": len(good), "skipped": skipped}


# A hub dataset may sit in the cache under more than one id: wikitext moved to Salesforce/wikitext
# (the short id redirects only online), so a preloaded cache holds either.
HUB_ALIASES = {
    "wikitext": ("wikitext", "Salesforce/wikitext"),
    "Salesforce/wikitext": ("Salesforce/wikitext", "wikitext"),
}
DATA_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".gz": "json", ".txt": "text"}


def cached_snapshot_files(repo_id: str, name: str | None, split: str) -> list[str]:
    """The data files of one split of a hub dataset from its snapshot in the hub cache, found the
    way the hub lays repos out: ``<config>/<split>-*.parquet`` (wikitext), or every data file at the
    top when none is named after a split (codeparrot-clean's ``file-*.json.gz`` shards are train)."""
    from huggingface_hub import snapshot_download

    for repo in HUB_ALIASES.get(repo_id, (repo_id,)):
        try:
            folder = Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache under this id: try the next
            continue
        root = folder / name if name and (folder / name).is_dir() else folder
        data = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
        named = [f for f in data if f.name.startswith(f"{split}-") or f.name.startswith(f"{split}.")]
        if named:
            return [str(f) for f in named]
        if split == "train" and not any(f.name.split("-")[0] in ("test", "validation", "valid") for f in data):
            return [str(f) for f in data]
    return []


def open_hf_dataset(src: DataSource):
    """``load_dataset`` as the source says, under each id the dataset has had; offline, where
    ``datasets`` finds neither the repo nor its prepared Arrow files, the same split read from the
    repo's snapshot in the hub cache (what a preloaded sandbox holds)."""
    from datasets import load_dataset

    _quiet_datasets()
    kwargs = {"split": src.split, "streaming": src.streaming}
    if src.data_files is not None:
        kwargs["data_files"] = src.data_files
    first = None
    for repo in HUB_ALIASES.get(src.path or "", (src.path,)):
        try:  # online, or offline from the Arrow files an earlier online load left in HF_DATASETS_CACHE
            return load_dataset(repo, src.name, **kwargs)
        except (OSError, ValueError, FileNotFoundError, ConnectionError) as exc:
            first = first or exc
    files = cached_snapshot_files(src.path or "", src.name, src.split) if src.data_files is None else []
    if files:
        builder = DATA_SUFFIXES[Path(files[0]).suffix]
        return load_dataset(builder, data_files={src.split: files}, split=src.split, streaming=src.streaming)
    ids = " or ".join(repr(i) for i in HUB_ALIASES.get(src.path or "", (src.path,)))
    raise _missing(f"dataset {ids} (config {src.name!r}, split {src.split!r})", first) from None


def iter_hf_texts(src: DataSource) -> Iterator[str]:
    for row in open_hf_dataset(src):
        if src.field not in row:
            raise KeyError(f"dataset {src.path!r} has no field {src.field!r}; its fields are {sorted(row)}")
        yield row[src.field]


def take_until_budget(docs: Iterable[str], token_budget: int | None, count_tokens) -> list[str]:
    """Documents in order until they hold ``token_budget`` tokens (each plus its EOS); all without a budget."""
    if token_budget is None or count_tokens is None:
        return list(docs)
    kept, total = [], 0
    for d in docs:
        kept.append(d)
        total += count_tokens(d) + 1
        if total >= token_budget:
            break
    return kept


def load_documents(src: DataSource, token_budget: int | None = None, count_tokens=None) -> tuple[list[str], dict]:
    """Documents of a source. With a token budget, documents are taken in order until the budget
    is met (``count_tokens(text) -> int``), which is how a streamed hub corpus is cut."""
    info: dict = {"kind": src.kind, "path": src.path}
    if src.kind == "py_dir":
        docs, extra = read_python_dir(src.path, src.exclude_tests)
        info.update(extra)
    elif src.kind == "text_file":
        p = Path(src.path or "")
        if p.is_dir():
            raise ValueError(f"English text file {p} is a folder: pass --general-file with one UTF-8 text file")
        if not p.is_file():
            raise AssetNotFoundError(
                f"English text file {p} does not exist: pass --general-file with a UTF-8 text file"
            )
        try:
            text = p.read_text(encoding="utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"English text file {p} is not UTF-8 text (byte {exc.start}): convert it, or pass another file"
            ) from None
        if not text.strip():
            raise ValueError(f"English text file {p} holds no text: pass a file with English prose")
        docs = [text]
    elif src.kind == "tiny_english":
        return load_documents(english_eval_source(), token_budget, count_tokens)
    elif src.kind == "tiny_english_train":
        return load_documents(english_train_source(), token_budget, count_tokens)
    elif src.kind == "hf":
        if src.join is not None:
            docs = [src.join.join(t for t in iter_hf_texts(src))]
        else:
            docs = iter_hf_texts(src)  # a stream: take_until_budget stops reading it in time
    else:
        raise ValueError(f"unknown data source kind {src.kind!r}: use hf, py_dir, text_file or tiny_english")
    docs = take_until_budget((d for d in docs if d and d.strip()), token_budget, count_tokens)
    if not docs:
        raise ValueError(f"the corpus from {src.kind} {src.path!r} is empty: point it at data that holds text")
    info["n_docs"] = len(docs)
    return docs, info
