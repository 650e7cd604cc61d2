"""The ``paraformer`` command line: a thin layer over documented Python functions.

    paraformer train [--model M] [--dataset D] [--mode fused|progressive|joint] ...
    paraformer eval RUN_DIR [--branches K | --sweep-branches] [--json]
    paraformer compress RUN_DIR --branches K [--select prefix|greedy] [--finetune-epochs E] --out DIR
    paraformer export RUN_DIR --format onnx
    paraformer expand RUN_DIR --add-branches M [--classes 5,6] [--epochs E] [--unfreeze] --out DIR
    paraformer info MODEL_OR_RUN [--json]
    paraformer list-models
    paraformer lm train | eval | sample | gfa | prune   (language models; see `paraformer lm -h`)

Each verb lives in ``paraformer.commands`` beside the function it calls (whose docstring
is its help text). Problems with the input end in a one-line ``error: ...`` and exit
code 2; nothing the program writes to stdout can end in a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from paraformer import __version__
from paraformer.commands import VERBS
from paraformer.commands.flags import EXIT_INTERRUPTED, EXIT_USAGE, Parser
from paraformer.errors import ParaformerError
from paraformer.parallel.distributed import shutdown


def build_parser() -> Parser:
    """The whole command line: every verb of ``paraformer.commands`` registers its own flags."""
    parser = Parser(
        prog="paraformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"paraformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    lm_parser = sub.add_parser(
        "lm",
        help="language models: train | eval | sample | gfa | prune | bench",
        description="Language models: CascadeFormer, uniform, widening and ParaFormer-LM.",
    )
    lm = lm_parser.add_subparsers(dest="lm_command", required=True, parser_class=Parser)
    for register in VERBS:
        register(sub, lm)
    return parser


class OutputError(ParaformerError):
    """stdout could not be written (a full disk, a closed or broken pipe)."""


class _GuardedStdout:
    """stdout whose write failures surface as one ``OutputError``, wherever they happen."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as err:
            raise OutputError(f"cannot write the output: {_reason(err)}.") from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as err:
            raise OutputError(f"cannot write the output: {_reason(err)}.") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _reason(err: BaseException) -> str:
    return (getattr(err, "strerror", None) or "it is closed").lower()


def _silence_stdout() -> None:
    """stdout cannot be written (a closed pipe, a full disk): send the rest to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())  # so the final flush at exit cannot fail again
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paraformer`` command."""
    rank = os.environ.get("RANK", "0")
    where = "" if rank in ("", "0") else f" (rank {rank})"
    guarded = sys.stdout is not None and not isinstance(sys.stdout, _GuardedStdout)
    if guarded:
        sys.stdout = _GuardedStdout(sys.stdout)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, --version, or a usage error already printed in one line
            return done.code if isinstance(done.code, int) else EXIT_USAGE
        code = args.func(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe or a full disk shows up here, not in the exit flush
        return code
    except OutputError as err:
        _silence_stdout()
        print(f"error{where}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ParaformerError as err:
        print(f"error{where}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `paraformer list-models | head`: the reader went away, stop quietly
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if guarded:
            sys.stdout = sys.stdout.stream
        shutdown()  # a torchrun launch leaves its process group cleanly


if __name__ == "__main__":
    sys.exit(main())
