"""``cptlab run | perplexity | base``: the lab from a terminal."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cptlab.core.config import ConfigError, DataSource, LabConfig, get_config
from cptlab.core.distributed import init_from_env, is_main
from cptlab.data.sources import load_model, load_tokenizer
from cptlab.lab.pipeline import RunFinished, run_all
from cptlab.lab.plots import save_all
from cptlab.lab.steps import format_table, small_split_warnings, summary_rows
from cptlab.lab.study import run_study, study_table
from cptlab.model.measure import resolve_base_model
from cptlab.model.perplexity import perplexity
from cptlab.notebook.execute import execute_lab
from cptlab.speed.device import pick_device, setup_cpu


def _config_from_args(args) -> LabConfig:
    overrides = {}
    for name in ("seed", "max_steps", "block_size", "cpt_lr", "batch_size", "device", "eval_max_tokens"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.base_model:
        overrides["base_model"] = args.base_model
    if args.code_dir:
        overrides["code_source"] = DataSource(kind="py_dir", path=args.code_dir, exclude_tests=False)
    if args.general_file:
        overrides["general_source"] = DataSource(kind="text_file", path=args.general_file)
    for item in getattr(args, "set", None) or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return get_config(args.preset, **overrides)


def cmd_run(args) -> int:
    init_from_env()  # under torchrun: one process per GPU (NCCL) or CPU share (gloo)
    args.quiet = args.quiet or not is_main()
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    cfg = _config_from_args(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN_DIR: the run folder to continue")
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset}")
    t0 = time.perf_counter()
    if args.resume and args.force:
        raise ConfigError("--resume continues a run and --force starts it over: pass one of them")
    try:
        run_all(cfg, out, progress=not args.quiet, study=not args.no_study, resume=args.resume, force=args.force)
    except RunFinished as done:
        print(done)
        print(format_table(summary_rows(out)))
        return 0
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: `cptlab run --out {out} --resume` (with the same options) continues from the last "
            "checkpoint",
            file=sys.stderr,
        )
        return 130
    if not is_main():
        return 0
    if args.plots:
        save_all(out)
    print(
        format_table(
            summary_rows(out) + [("run folder", str(out)), ("wall seconds", f"{time.perf_counter() - t0:.1f}")]
        )
    )
    for line in small_split_warnings(out):
        print(f"cptlab run: warning: {line}", file=sys.stderr)
    return 0


MAX_WHOLE_TEXT = 64 << 20  # without --max-tokens, a text file larger than this is refused


def read_tokens(path: Path, tokenizer, max_tokens: int | None) -> list[int]:
    """The file's token ids, read a chunk at a time (cut after a newline) and only as far as
    ``max_tokens`` needs: memory follows what is scored, not the file's size."""
    chunk_chars = 1 << 20 if max_tokens is None else min(1 << 20, max(1 << 14, 16 * max_tokens))
    if max_tokens is None and path.stat().st_size > MAX_WHOLE_TEXT:
        raise ValueError(
            f"--text {path} is larger than {MAX_WHOLE_TEXT >> 20} MB: pass --max-tokens N to score its first N tokens"
        )
    ids: list[int] = []
    rest = ""
    try:
        with open(path, encoding="utf-8") as fh:
            while max_tokens is None or len(ids) < max_tokens:
                chunk = fh.read(chunk_chars)
                text = rest + chunk
                cut = text.rfind("\n") + 1 if chunk else len(text)
                if chunk and cut == 0:
                    cut = len(text) if len(text) > 8 * chunk_chars else 0  # one huge line: cut anyway
                part, rest = text[:cut], text[cut:]
                if part:
                    ids += tokenizer(part, add_special_tokens=False, verbose=False)["input_ids"]
                if not chunk:
                    break
    except UnicodeDecodeError as exc:
        raise ValueError(f"--text {path} is not UTF-8 text (byte {exc.start}): pass a UTF-8 text file") from None
    return ids if max_tokens is None else ids[:max_tokens]


def cmd_perplexity(args) -> int:
    setup_cpu()
    text_path = Path(args.text)
    if text_path.is_dir():
        raise ValueError(f"--text {text_path} is a folder: pass one UTF-8 text file")
    if not text_path.is_file():
        raise FileNotFoundError(f"--text {text_path} does not exist: pass a UTF-8 text file")
    for name, value, low in (
        ("--block-size", args.block_size, 2),
        ("--stride", args.stride, 1),
        ("--max-tokens", args.max_tokens, 2),
        ("--batch-size", args.batch_size, 1),
    ):
        if value is not None and value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    tok = load_tokenizer(args.model)
    device = pick_device(args.device)
    model = load_model(args.model).to(device)
    ids = read_tokens(text_path, tok, args.max_tokens)
    block = args.block_size or getattr(model.config, "n_positions", 1024)
    res = perplexity(
        model, ids, block, stride=args.stride, batch_size=args.batch_size, max_tokens=args.max_tokens, device=device
    )
    print(
        json.dumps(
            {
                "ppl": res.ppl,
                "nll_sum": res.nll_sum,
                "tokens": res.tokens,
                "block_size": block,
                "stride": res.protocol["stride"],
                "model": args.model,
                "text": str(text_path),
                "protocol": res.protocol,
            }
        )
    )
    return 0


def cmd_tradeoff(args) -> int:
    study = run_study(args.run, progress=not args.quiet)
    if args.plots:
        save_all(args.run)
    print(study_table(study))
    return 0


def cmd_base(args) -> int:
    cfg = get_config(args.preset, **({"seed": args.seed} if args.seed is not None else {}))
    print(resolve_base_model(cfg, progress=True))
    return 0


def cmd_lab(args) -> int:
    t0 = time.perf_counter()
    run = execute_lab(
        args.preset, args.runs, args.seed if args.seed is not None else 1234, run_dir=args.out, track=args.track
    )
    save_all(run)
    print("\n" + format_table(summary_rows(run)))
    print(f"\nrun folder:  {run}")
    print(f"notebooks:   {', '.join(sorted(p.name for p in run.glob('*.ipynb')))}")
    print(f"plots:       {', '.join(sorted(p.name for p in (run / 'plots').glob('*.png')))}")
    print(f"results:     {', '.join(sorted(p.name for p in run.glob('step*.json')))}", flush=True)
    # The grader is another package in another process: the lab never imports what grades it.
    graded = subprocess.run([sys.executable, "-m", "checkers", "summarize", str(run), "--track", args.track])
    print(f"lab wall time: {time.perf_counter() - t0:.0f} s")
    return graded.returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cptlab", description="Continued pre-training lab: gain on code vs forgetting of English."
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="baseline, corpus, CPT and evaluation; prints a summary table")
    r.add_argument(
        "--preset", default="tiny", help="tiny (CPU, offline; default), gpt2 (GPU, HF cache) or smoke (seconds)"
    )
    r.add_argument("--out", help="run folder (default runs/<time>-<preset>)")
    r.add_argument("--seed", type=int)
    r.add_argument("--max-steps", type=int)
    r.add_argument("--block-size", type=int)
    r.add_argument("--cpt-lr", type=float)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--eval-max-tokens", type=int)
    r.add_argument("--device", help="auto, cpu or cuda")
    r.add_argument("--base-model", help="hub id or local model folder (overrides the preset's)")
    r.add_argument("--code-dir", help="a folder of .py files to use as the code corpus")
    r.add_argument("--general-file", help="an English text file to use for the forgetting measurement")
    r.add_argument("--plots", action="store_true", help="also save the PNG plots in the run folder")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint"
    )
    r.add_argument("--force", action="store_true", help="start over in an --out that already holds a run")
    r.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any LabConfig field, e.g. --set curve_every=5 (repeatable)"
    )
    r.add_argument("--no-study", action="store_true", help="skip the trade-off study (replay, LoRA, interpolation)")
    r.set_defaults(func=cmd_run)

    q = sub.add_parser("perplexity", help="perplexity of one text file under the lab's protocol; prints JSON")
    q.add_argument("--model", required=True, help="hub id or local model folder")
    q.add_argument("--text", required=True, help="a UTF-8 text file (one document, no EOS added)")
    q.add_argument("--block-size", type=int)
    q.add_argument("--stride", type=int)
    q.add_argument("--max-tokens", type=int)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--device", default="auto")
    q.set_defaults(func=cmd_perplexity)

    lab = sub.add_parser("lab", help="execute the four notebooks headless into a new run folder, then grade it")
    lab.add_argument("--preset", default="tiny")
    lab.add_argument("--runs", default="runs", help="parent folder of run folders (runs/latest points to the newest)")
    lab.add_argument("--out", help="use this run folder instead of a new one under --runs")
    lab.add_argument("--seed", type=int)
    lab.add_argument(
        "--track",
        choices=("full", "core"),
        default="full",
        help="full: every cell (default); core: the core's cells, Go further's checks and long runs left out",
    )
    lab.set_defaults(func=cmd_lab)

    t = sub.add_parser("tradeoff", help="the step-4 study on a finished run: replay, LoRA, interpolation, Pareto")
    t.add_argument("--run", required=True, help="a run folder with steps 1-4 done")
    t.add_argument("--plots", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_tradeoff)

    b = sub.add_parser("base", help="build (once) and print the tiny preset's cached base model folder")
    b.add_argument("--preset", default="tiny")
    b.add_argument("--seed", type=int)
    b.set_defaults(func=cmd_base)
    return p


def quiet_libraries() -> None:
    """Outside a terminal (a pipe, a log file, CI) the libraries' loading bars are noise: only our
    output and real warnings go out."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():
        quiet_libraries()
    try:
        return args.func(args)
    except (ConfigError, OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"cptlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
