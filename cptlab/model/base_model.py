"""The tiny preset's base model, pre-trained here once from what is already on disk and cached.

English: the Wikipedia article sample inside the gensim wheel, read with gensim's wiki tools;
every 10th article is held out, whole, for the English evaluation set. Code: this interpreter's
standard library (see ``sources.read_python_dir``). Base model: a small GPT-2 pre-trained here on
the English (plus a little Python from the stdlib's own ``test`` package, disjoint from the CPT
corpus, as WebText held some code), built once and cached under ``$CPTLAB_CACHE``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from cptlab.core.cache import cache_root, fingerprint
from cptlab.core.config import LabConfig, TinyBaseConfig
from cptlab.core.files import atomic_dir, build_lock, is_complete, sha256_file
from cptlab.core.results import write_json_atomic
from cptlab.data.corpus import eos_join_stream, replay_batches
from cptlab.data.sources import load_documents, python_files, stdlib_dir
from cptlab.data.wiki_sample import data_dir, english_train_source
from cptlab.model.train import Hooks, train
from cptlab.speed.device import pick_device, seed_everything, setup_cpu

EOS = "<|endoftext|>"


def base_code_documents(tcfg: TinyBaseConfig, seed: int) -> list[str]:
    """A little Python for the base mix, from the stdlib's ``test`` package (never in the CPT corpus)."""
    files = python_files(stdlib_dir() / "test", exclude_tests=False)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.permutation(len(files))[: tcfg.max_code_test_files].tolist())
    docs = []
    for i in picked:
        try:
            text = files[i].read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and len(text) < 200_000:
            docs.append(text)
    return docs


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A GPT-2-style byte-level BPE with ``<|endoftext|>`` as EOS, wrapped as a transformers tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=max_length
    )


def base_model_dir(cfg: LabConfig) -> Path:
    shape = asdict(cfg.tiny)
    seed = shape.pop("seed")
    key = fingerprint(shape, seed, data_dir().name, "v3")
    return cache_root() / f"tiny-base-{key}"


def _weights_digest(folder: Path) -> str:
    return " ".join(f"{f.name}:{sha256_file(f)}" for f in sorted(folder.glob("*.safetensors")))


def _weights_intact(folder: Path) -> bool:
    """A cached base model is trusted only if its weights hash as they did when it was built."""
    digest = folder / "weights.sha256"
    return digest.exists() and any(folder.glob("*.safetensors")) and digest.read_text() == _weights_digest(folder)


def ensure_base_model(cfg: LabConfig, progress: bool = True) -> Path:
    """The cached tiny base model folder, pre-training it first if it is not there yet (one process
    builds it; any other that asks meanwhile waits for it)."""
    folder = base_model_dir(cfg)
    if is_complete(folder) and _weights_intact(folder):
        return folder
    with build_lock(folder):
        if is_complete(folder) and _weights_intact(folder):
            return folder
        return _pretrain_base(cfg, folder, progress)


def _pretrain_base(cfg: LabConfig, folder: Path, progress: bool) -> Path:
    setup_cpu()
    tcfg = cfg.tiny
    english, _ = load_documents(english_train_source())
    code = base_code_documents(tcfg, tcfg.seed)
    tokenizer = train_tokenizer(english + code, tcfg.vocab_size, tcfg.n_positions)
    eng_stream = eos_join_stream(english, tokenizer)
    code_stream = eos_join_stream(code, tokenizer)
    seed_everything(tcfg.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=tcfg.n_positions,
            n_embd=tcfg.n_embd,
            n_layer=tcfg.n_layer,
            n_head=tcfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    block = tcfg.n_positions
    pre_cfg = cfg.replace(
        cpt_lr=tcfg.pretrain_lr,
        warmup_steps=tcfg.pretrain_warmup_steps,
        max_steps=tcfg.pretrain_steps,
        batch_size=tcfg.pretrain_batch_size,
        grad_accum=1,
        block_size=block,
        min_lr_ratio=0.1,
        seed=tcfg.seed,
    )
    device = pick_device(cfg.device)
    # a code share mixed into every batch, spread so it is exact over the run (5% of 8 is not 0)
    mixed = replay_batches(eng_stream, code_stream, pre_cfg, tcfg.code_fraction, record=[])
    result = train(
        model,
        eng_stream,
        pre_cfg,
        device,
        None,
        progress=progress,
        desc=f"{cfg.preset} base pre-training (once, then cached)",
        hooks=Hooks(batch_fn=mixed),
    )
    with atomic_dir(folder) as tmp:
        model.to("cpu").save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "weights.sha256").write_text(_weights_digest(tmp))
        write_json_atomic(
            tmp / "pretraining.json",
            {
                "tiny": asdict(tcfg),
                "seed": tcfg.seed,
                "seconds": result.seconds,
                "tokens": result.tokens,
                "english_docs": len(english),
                "english_tokens": int(len(eng_stream)),
                "code_docs": len(code),
                "code_tokens": int(len(code_stream)),
                "final_loss": result.log[-1]["loss"],
                "log": result.log,
            },
        )
    return folder
