"""The `modelpress` command. Every command is sugar over a workflow config.

Heavy libraries are imported inside the handlers, so `modelpress --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from modelpress.cli_args import non_empty, positive_int, template_text
from modelpress.redact import RedactingFormatter, redact_text

log = logging.getLogger("modelpress")

EXIT_CONFIG = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
GOALS_NOT_MET = 3  # a search ran, but no candidate meets the goals (the report says which came closest)


def entry() -> int:
    """The `modelpress` command: `main` in a process of its own, tuned as `modelpress.runtime` says."""
    from modelpress import runtime

    runtime.tune_allocator()
    return main(own_process=True)


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no real stdout
        return False


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Parse and run one command. `own_process`: the process is modelpress's alone (see `entry`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.own_process = own_process
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_CONFIG
    _setup_logging(args)
    from modelpress.errors import ConfigError, ModelpressError

    try:
        return args.handler(args) or 0
    except ConfigError as err:
        print_error(f"{err}")
        return EXIT_CONFIG
    except ModelpressError as err:
        if args.verbose:
            log.exception("details")
        print_error(f"{err}")
        return EXIT_FAILURE
    except BrokenPipeError as err:  # the reader went away (`| head`): not an error of this command
        if not _reader_gone():  # another pipe broke (a worker's, a subprocess's): an error
            return _unexpected(err, args.verbose)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0
    except OSError as err:
        from modelpress.errors import is_disk_full

        if isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)):
            if args.verbose:
                log.exception("details")
            print_error(f"{err.strerror or err}: {err.filename or 'a path modelpress was given'}. Check the path and "
                        f"its permissions{'' if args.verbose else ' (--verbose shows where it was met)'}.")
            return EXIT_FAILURE
        if not is_disk_full(err):
            return _unexpected(err, args.verbose)
        if args.verbose:
            log.exception("details")
        print_error(f"the disk is full (or a size limit was hit) while writing {err.filename or 'output'}: "
                    f"{err.strerror}. Free space or choose another cache_dir/output_dir, then run again: "
                    "finished passes are cached and nothing half-written is kept.")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        resume = (" Finished passes are cached and training keeps its last checkpoint: run the same command again "
                  "to resume.") if getattr(args, "runs_workflow", False) else ""
        print(f"\ninterrupted.{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a library's error, or a modelpress bug: one line, the traceback on request
        return _unexpected(err, args.verbose)


def print_error(text: str) -> None:
    print(redact_text(f"error: {text}"), file=sys.stderr)


def print_findings(config, notes: bool = True) -> None:
    """A validated config's warnings (and notes) on stderr, as `validate` shows them."""
    for warning in config.warnings:
        print(redact_text(f"warning: {warning}"), file=sys.stderr)
    for note in config.notes if notes else []:
        print(redact_text(f"note: {note}"), file=sys.stderr)


def _unexpected(err: BaseException, verbose: bool) -> int:
    if verbose:
        log.exception("details")
    again = ("the traceback is above; report it" if verbose else
             "run again with --verbose for the traceback, and report it")
    print_error(f"{type(err).__name__}: {err}\n(unexpected: {again} with that output)")
    return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Fine-tune, merge, quantize and measure a small language model from one config file.",
    )
    _add_log_flags(parser, default=False)
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("run", help="run a workflow config")
    p.add_argument("--config", "-c", required=True, help="workflow config (JSON or YAML)")
    add_progress_flag(p)
    p.set_defaults(handler=cmd_run, runs_workflow=True)

    p = sub.add_parser("validate", help="check a config and report every problem at once")
    p.add_argument("config", help="workflow config (JSON or YAML)")
    p.add_argument("--print", action="store_true", help="print the normalised config")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("generate", help="generate text with a model folder modelpress produced")
    p.add_argument("model_dir")
    p.add_argument("--prompt", "-p", required=True, help="text; wrapped in the training template unless --raw")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--raw", action="store_true", help="feed the prompt as is, without the training template")
    p.add_argument("--adapter", help="an adapter file for this model (ExtractAdapters output; default: the "
                   "folder's own), or 'none' for the base model")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("evaluate", help="measure a model folder modelpress produced on a new data file")
    p.add_argument("model_dir")
    p.add_argument("--data", required=True, nargs="+", help="JSON, JSONL, CSV or Parquet files")
    p.add_argument("--template", type=template_text,
                   help="text template (default: the one saved beside the model); \\n and \\t are a newline and a tab")
    p.add_argument("--max-new-tokens", type=positive_int,
                   help="answer length (default: the one the run measured the model with, else 8)")
    p.add_argument("--max-examples", type=positive_int)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a Hugging Face model folder ships (only for a model you trust)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (no bars unless --progress)")
    add_progress_flag(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("report", help="re-render OUTPUT_DIR/report.html from a run's JSON files")
    p.add_argument("output_dir")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("create-tiny-model", help="write a deterministic tiny Phi-3 (the stand-in for Phi-3-mini)")
    p.add_argument("--out", required=True, type=non_empty, help="folder to write")
    p.add_argument("--corpus", nargs="*", help="text files to train the tokenizer on (default: built-in)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_create_tiny_model)

    p = sub.add_parser("passes", help="list the passes and their parameters")
    p.set_defaults(handler=cmd_passes)

    from modelpress.shortcuts import add_shortcuts

    add_shortcuts(sub)
    for command in sub.choices.values():  # `modelpress run -v ...` as well as `modelpress -v run ...`
        _add_log_flags(command, default=argparse.SUPPRESS)
    return parser


def _add_log_flags(parser: argparse.ArgumentParser, default) -> None:
    """--verbose and --quiet; on a command with SUPPRESS as default, so a flag before the command holds."""
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="debug logging and tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", default=default, help="warnings and errors only")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """`--progress` / `--no-progress`; neither: bars only on a terminal (see `wants_bars`)."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="draw progress bars (default: only when stderr is a terminal; otherwise plain log lines)")


def wants_bars(choice: bool | None) -> bool:
    """Bars redraw in place on a terminal but add a line per redraw to a log file or pipe."""
    return sys.stderr.isatty() if choice is None else choice


def _setup_logging(args) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("[modelpress] %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # bitsandbytes warns on import that it cannot fetch CPU kernels from a hub; modelpress never
    # fetches from a hub, and the built-in kernels are used instead, so the warning is only noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    checkpoints = logging.getLogger("transformers.trainer_utils")
    if _no_mtime_note not in checkpoints.filters:
        checkpoints.addFilter(_no_mtime_note)


def _no_mtime_note(record) -> bool:
    """transformers orders checkpoints by number when two were saved within a second (a fast run): not news."""
    return "mtime may not be reliable" not in record.getMessage()


def cmd_run(args) -> int:
    from modelpress.config import load_config

    config = load_config(args.config)
    if not (args.verbose or args.quiet):
        log.setLevel(config.engine.log_level)
    return run_config(config, show_progress=wants_bars(args.progress), own_process=args.own_process)


def run_config(config, show_progress: bool = True, own_process: bool = False) -> int:
    """Run a validated config and print the summary; shared by `run` and the shortcuts."""
    from modelpress.engine import run_workflow
    from modelpress.report import search_table, summary_table
    from modelpress.runtime import hide_bitsandbytes_unless_used

    if own_process and hide_bitsandbytes_unless_used(config):
        log.debug("bitsandbytes is not loaded: no step of this workflow uses it")
    if not show_progress:
        from modelpress.runtime import quiet_library_bars

        quiet_library_bars()

    for warning in config.warnings:
        log.warning(warning)
    for note in config.notes:
        log.info(note)
    result = run_workflow(config, show_progress=show_progress)
    print(summary_table(result.history, result.metrics))
    search = result.metrics.get("search")
    if search:
        print("\n" + search_table(search))
    met = not search or search["best"] is not None
    print(f"\n{'final model' if met else 'model (NOT updated)'}: {result.output_dir / 'model'}")
    print(f"metrics:     {result.output_dir / 'metrics.json'}")
    print(f"report:      {result.output_dir / 'report.html'}")
    if search and search["best"] is None and search["closest"] is None:  # nothing measured: a failure, not a miss
        errors = [c["error"] for c in search["candidates"] if c.get("error")]
        why = (f"{len(errors)} of {search['evaluated']} failed; the first: {errors[0]}" if errors else
               "the search's budget (max_time, max_iter) ended before the first; raise it")
        print_error(f"no candidate was measured ({why})")
        return EXIT_FAILURE
    return 0 if met else GOALS_NOT_MET


def cmd_validate(args) -> int:
    from modelpress.config import load_config

    config = load_config(args.config)
    print_findings(config)
    if args.print:
        print(json.dumps(config.resolved(), indent=2))
    def step(p) -> str:
        types = "|".join(dict.fromkeys(c.type for c in p.choices()))
        count = len(p.choices())
        return f"{p.name} ({types}{f', {count} choices' if count > 1 else ''})"

    passes = " -> ".join(step(p) for p in config.passes) or "no passes"
    out = sys.stderr if args.print else sys.stdout  # with --print, stdout is the JSON alone
    print(f"{args.config}: valid ({config.schema_style} schema): {passes}", file=out)
    if config.search.enabled:
        import math

        size = math.prod(len(p.choices()) for p in config.passes)
        print(f"search: {size} candidates, sampler {config.search.sampler}, {config.search.execution_order}",
              file=out)
    return 0


def cmd_generate(args) -> int:
    from modelpress.errors import ConfigError, Problem
    from modelpress.generate import generate

    none = args.adapter is not None and args.adapter.lower() == "none"
    adapter = Path(args.adapter) if args.adapter and not none else None
    if adapter is not None and not adapter.is_file():
        raise ConfigError([Problem("--adapter", f"{adapter}: no such file",
                                   "Give an adapter_weights.* file that ExtractAdapters wrote, or 'none'.")])
    if not args.prompt.strip() and not args.raw:
        raise ConfigError([Problem("--prompt", "the prompt is empty", "Give the text to answer.")])
    for piece in generate(Path(args.model_dir), args.prompt, args.max_new_tokens, raw=args.raw,
                          adapter=adapter, use_adapter=not none):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_evaluate(args) -> int:
    from modelpress.measure import evaluate_folder, format_result, result_json

    bars = bool(args.progress) if args.json else wants_bars(args.progress)  # --json is for scripts: no bars
    if not bars:
        from modelpress.runtime import quiet_library_bars

        quiet_library_bars()
    result = evaluate_folder(Path(args.model_dir), [Path(p) for p in args.data], args.template,
                             args.max_new_tokens, args.max_examples, show_progress=bars,
                             trust_remote_code=args.trust_remote_code)
    print(result_json(result) if args.json else format_result(result))
    return 0


def cmd_report(args) -> int:
    from modelpress.errors import ModelpressError
    from modelpress.html_report import render_report

    folder = Path(args.output_dir)
    if not (folder / "run_history.json").is_file():
        raise ModelpressError(f"{folder} holds no run_history.json: point report at a run's output_dir")
    print(f"report written to {render_report(folder)}")
    return 0


def cmd_create_tiny_model(args) -> int:
    if not wants_bars(None):
        from modelpress.runtime import quiet_library_bars

        quiet_library_bars()  # transformers' "Writing model shards" bar, in a log
    from modelpress.errors import ModelpressError
    from modelpress.tiny import create_tiny_model, is_tiny_model

    corpus = [Path(p) for p in args.corpus] if args.corpus else None
    target = Path(args.out).resolve()
    if target.exists() and not target.is_dir():
        raise ModelpressError(f"--out {args.out}: a file of that name exists; name a new or empty folder")
    if target.is_dir() and any(target.iterdir()) and not is_tiny_model(target):
        raise ModelpressError(f"--out {args.out}: the folder holds files that create-tiny-model did not write (a "
                              "model of your own would be replaced whole); name a new or empty folder")
    missing = [str(p) for p in corpus or [] if not p.is_file()]
    if missing:
        raise ModelpressError(f"--corpus: file not found: {', '.join(missing)}; give text files to build the "
                              "tokenizer's vocabulary from, or leave --corpus out for the built-in one")
    out = create_tiny_model(target, corpus, seed=args.seed)
    print(f"tiny Phi-3 written to {out}")
    return 0


def cmd_passes(args) -> int:
    from modelpress.passes.catalog import CATALOG
    from modelpress.passes.plugins import load_entry_points

    load_entry_points()
    for spec in CATALOG.values():
        extra = f"  (needs: pip install 'modelpress[{spec.optional_package[1]}]')" if spec.optional_package else ""
        origin = f"  [plugin: {spec.origin}]" if spec.origin != "built-in" else ""
        print(f"{spec.name}: {spec.summary}; {' or '.join(spec.accepts)} -> {spec.produces}{extra}{origin}")
        searchable = spec.search_space()
        for name, info in spec.params.model_fields.items():
            default = "required" if info.is_required() else _default_of(info)
            search = f"; search: {searchable[name]}" if name in searchable else ""
            print(f"    {name}: {info.description or ''} ({default}{search})")
    return 0


def _default_of(info) -> str:
    """A parameter's default as `modelpress passes` shows it: a nested settings block by its own defaults."""
    from pydantic import BaseModel

    value = info.get_default(call_default_factory=True)
    return "each key at its own default" if isinstance(value, BaseModel) else f"default {value!r}"


if __name__ == "__main__":
    sys.exit(main())
