"""`kbypass ...`: one entry point, one module per command.

Each command lives in `kbypass.tools.<name>` and exposes `register(subparsers)`, which adds its parser and
sets `func=run` (run(args) -> exit code). Errors the user can fix (`KbypassError`, and argparse's own
complaints about options) print one line `kbypass: error: ...` and exit 2; anything else is a bug and keeps
its traceback.

Signals: SIGTERM unwinds like SIGINT (a `Terminated` exception), so `with` blocks close ports, detach
programs and remove what a command made; a command that stops on a signal by design (sink, gen, ...)
catches it around its loop and still prints its summary. Uncaught, SIGINT exits 130 and SIGTERM 143.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import os
import signal
import sys
import threading
import time

from kbypass import __version__
from kbypass.errors import KbypassError


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that cleanup runs (like KeyboardInterrupt for SIGINT)."""


_MAIN_PID = None  # the process main() runs in
_COMMAND_RUNNING = False  # args.func is running: a lost signal may be delivered again (_redeliver)


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _MAIN_PID:
        # A child forked from us (pyroute2 forks one per namespace it opens, and its parent ends it with
        # SIGTERM) inherits this handler: raising there would unwind the parent's frames in the child and
        # run their cleanup (capture deleted its own output file that way). The child just goes.
        os._exit(128 + signum)
    raise Terminated()


def _redeliver(info) -> None:
    """sys.unraisablehook: a signal whose exception was raised inside a finalizer or an at-fork handler
    (pyroute2's event loops and forks have them) is one Python only reports ("Exception ignored in ...",
    a traceback) and then forgets, so Ctrl-C was lost. Deliver it again to the main thread, quietly;
    anything else goes to the default hook."""
    if info.exc_type is not None and issubclass(info.exc_type, (KeyboardInterrupt, Terminated)):
        sig = signal.SIGINT if issubclass(info.exc_type, KeyboardInterrupt) else signal.SIGTERM
        # from another thread, a moment later: raised here, in the hook, it would be swallowed again
        threading.Thread(target=_interrupt_main_later, args=(sig,), daemon=True).start()
        return
    sys.__unraisablehook__(info)


def _interrupt_main_later(sig: int) -> None:
    # Not while the main thread is still inside the hook: a signal handled there is raised out of the hook
    # and swallowed once more (a loaded machine let the old fixed 1 ms pause run out first, now and then).
    main = threading.main_thread().ident
    deadline = time.monotonic() + 1.0
    while _in_hook(main) and time.monotonic() < deadline:
        time.sleep(0.001)
    # only into the command: once it has returned (its summary printed, its exit code chosen), a late
    # redelivery would kill the interpreter at exit with the signal, and the exit code would be lost
    if _COMMAND_RUNNING:
        _thread.interrupt_main(sig)


def _in_hook(thread_id: int | None) -> bool:
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code is _redeliver.__code__:
            return True
        frame = frame.f_back
    return False


def _quiet(info) -> None:
    """sys.unraisablehook after a signal cut the command short: objects it left half-made (an event loop
    whose __init__ the signal interrupted, in pyroute2) fail in their finalizers, at exit or in a later
    collection. That is the interruption's doing, not news for the user who pressed Ctrl-C."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line naming the fix (the house style), not usage plus a message."""

    def error(self, message: str):
        where = self.prog.removeprefix("kbypass").strip()
        self.exit(2, f"kbypass: error: {where + ': ' if where else ''}{message} (see '{self.prog} --help')\n")

# Commands whose loop (a Stopper's) is their last phase: after it only closing and the summary remain.
LOOP_LAST = frozenset({"sink", "reflect", "capture", "gen", "stats", "top", "pingpong", "http"})

# Imported after the options are read and before the command runs, while a signal still just exits (see
# _exit_at_start_up): numpy's C core turns a KeyboardInterrupt during its import into an ImportError, and
# pyroute2's import can swallow one. Most commands use both; the others pay ~0.1 s.
START_UP_IMPORTS = ("numpy", "pyroute2")

# Order is the order of `kbypass --help`.
COMMANDS = [
    "testbed",
    "doctor",
    "demo",
    "sink",
    "reflect",
    "gen",
    "stats",
    "top",
    "report",
    "capture",
    "bench",
    "pingpong",
    "tune",
    "xfer",
    "http",
    "cp",
    "run",
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` (a command's name) just that command's: what `kbypass NAME ...`
    parses, without importing the other commands' modules."""
    parser = Parser(
        prog="kbypass",
        description="Kernel-bypass networking from Python: steer chosen flows to AF_XDP rings.",
    )
    parser.add_argument("--version", action="version", version=f"kbypass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in [only] if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"kbypass.tools.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"kbypass.tools.{name}":
                continue  # command not built yet in this tree
            raise
        module.register(sub)
    return parser


def _exit_at_start_up(signum, frame) -> None:
    """SIGINT or SIGTERM while the commands' modules load and the options are read: nothing is made yet, so
    the process just goes, with that signal's exit code (130, 143) and nothing printed. Raised instead, the
    exception could land inside an import that reports it as another error (numpy's C core turns it into
    "ImportError: numpy._core.multiarray failed to import") or that swallows it (the command then ran on,
    unstopped)."""
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    global _MAIN_PID, _COMMAND_RUNNING
    _MAIN_PID = os.getpid()
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if argv is None:  # the console script; called in-process (tests), the caller's handlers stay
        # (The SIGTERM handler in /proc/PID/status SigCgt is also how a test knows kbypass's own code has
        # begun: before it only CPython's start-up and the console script run, and a signal is CPython's.)
        if old_int is not signal.SIG_IGN:  # ignored as inherited (a script's background job): as Python does
            signal.signal(signal.SIGINT, _exit_at_start_up)
        signal.signal(signal.SIGTERM, _exit_at_start_up)
    # This module imports little (the console script imports it before main runs), and the commands'
    # modules are imported here, under the handlers above: a Ctrl-C while Python is still loading them
    # (pyroute2, numpy: a few hundred ms) is a quiet exit 130, not a traceback.
    try:
        from kbypass.port.loop import LateInterrupt, Stopper
        from kbypass.tools._options import apply_prefix

        given = sys.argv[1:] if argv is None else argv
        parser = build_parser(only=given[0] if given else None)
        args = parser.parse_args(argv)
        # What the command runs on (numpy, pyroute2, the port stack) is imported by its run(), not with
        # its options; the libraries whose import a signal garbles are loaded here, still under the
        # start-up handlers.
        for heavy in START_UP_IMPORTS:
            importlib.import_module(heavy)
    except KeyboardInterrupt:  # in-process
        sys.unraisablehook = _quiet
        return 130
    except BaseException:  # SystemExit: --help, --version, a bad option
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        raise
    # a Ctrl-C as the run ends (kbypass.port.loop), for the commands whose receive or send loop is their last
    # phase; bench and demo run trial after trial, and a Ctrl-C between two must stop them
    Stopper.absorb_late, LateInterrupt.pending = args.command in LOOP_LAST, False
    old_hook, sys.unraisablehook = sys.unraisablehook, _redeliver
    old_prefix = os.environ.get("KBYPASS_TESTBED")
    try:
        # from here a signal unwinds, so that what the command makes is removed again
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, _on_sigterm)
        apply_prefix(args)
        _COMMAND_RUNNING = True
        return int(args.func(args) or 0)
    except KbypassError as e:
        print(f"kbypass: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        old_hook = _quiet
        return 130
    except Terminated:
        old_hook = _quiet
        return 143
    except BrokenPipeError:  # `kbypass ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    finally:
        _COMMAND_RUNNING = False
        Stopper.absorb_late, LateInterrupt.pending = False, False
        # Called in-process (tests): SIGINT as found. The console script exits now with the status chosen: a
        # Ctrl-C while the interpreter shuts down (Python gives SIGINT its default action then) would kill
        # it by the signal instead, so from here on SIGINT is ignored.
        signal.signal(signal.SIGINT, old_int if argv is not None else signal.SIG_IGN)
        signal.signal(signal.SIGTERM, old_term)
        sys.unraisablehook = old_hook  # _quiet, when a signal ended the command: it stays until exit
        if old_prefix is None:  # main() is also called in-process (tests): leave the environment as found
            os.environ.pop("KBYPASS_TESTBED", None)
        else:
            os.environ["KBYPASS_TESTBED"] = old_prefix


if __name__ == "__main__":
    raise SystemExit(main())
