"""Step 2's results: the CPT corpus, its EOS packing, whole-document split and blocks."""

from __future__ import annotations

from pathlib import Path

from checkers.core.report import Report
from checkers.results.common import _start, load, num


def _check_step2(run_dir: str | Path, preset: str | None = None) -> Report:
    ck, d, T = _start(run_dir, 2, preset)
    if d is None:
        return ck
    ck.check(
        "s2.eos_count",
        "one EOS per document (eos_count == n_docs)",
        lambda: (
            num(d, "eos_count") == num(d, "n_docs"),
            f"eos_count={int(num(d, 'eos_count'))}, n_docs={int(num(d, 'n_docs'))}",
        ),
        "append tokenizer.eos_token_id after every document before joining them into one stream",
    )
    ck.check(
        "s2.sizes_add_up",
        "train + val = all tokens and all documents",
        lambda: (
            num(d, "train_tokens") + num(d, "val_tokens") == num(d, "n_tokens")
            and num(d, "train_docs") + num(d, "val_docs") == num(d, "n_docs"),
            f"tokens {int(num(d, 'train_tokens'))}+{int(num(d, 'val_tokens'))} of {int(num(d, 'n_tokens'))}, "
            f"docs {int(num(d, 'train_docs'))}+{int(num(d, 'val_docs'))} of {int(num(d, 'n_docs'))}",
        ),
        "every document goes to exactly one side of the split",
    )

    def split():
        frac = num(d, "val_tokens") / num(d, "n_tokens")
        lo, hi = T["val_fraction"], T["val_fraction"] + T["split_tolerance"]
        return lo <= frac <= hi, f"val fraction {frac:.4f}"

    ck.check(
        "s2.split_98_2",
        f"validation share in [{T['val_fraction']}, {T['val_fraction'] + T['split_tolerance']:.3f}] "
        "(whole documents, so at or a little above 2%)",
        split,
        "take whole documents for validation until they hold 2% of the tokens",
    )
    ck.check(
        "s2.split_tokens",
        f"both splits >= {T['min_split_tokens']:,} tokens",
        lambda: (
            min(num(d, "train_tokens"), num(d, "val_tokens")) >= T["min_split_tokens"],
            f"train {int(num(d, 'train_tokens')):,}, val {int(num(d, 'val_tokens')):,}",
        ),
        "a 2% validation split is only trustworthy when it holds tens of thousands of tokens: add documents",
    )

    def blocks():
        s1, _ = load(run_dir, 1)
        block = num(d, "block_size")
        expect_block = num(s1, "config.block_size") if s1 else T["block_size"]
        n_blocks = num(d, "n_blocks")
        return block == expect_block and n_blocks == num(
            d, "train_tokens"
        ) // block, f"block_size={int(block)}, n_blocks={int(n_blocks)}"

    ck.check(
        "s2.blocks",
        f"windows of block_size {T['block_size']}; n_blocks = train_tokens // block_size",
        blocks,
        "reshape the training stream to (-1, block_size) after dropping the tail",
    )
    return ck
