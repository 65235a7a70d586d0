"""What every command line shares: one-line errors and exit codes, checked numbers,
and a `--help` that shows every default.

Exit codes: 0 done; 1 some inputs failed (the others were written); 2 nothing
was done (bad arguments, settings, checkpoint or data, out of memory, a folder
that cannot be written). Every error is one line on stderr, `error: ...`.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends '(default: X)' to every option
    that has a default (flags and options whose default depends on other
    options say so in their own help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`error: ...`, exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _number(kind: type, test: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = wanted  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v == v and v != float("inf"),
                         "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def fail(message: object) -> int:
    """Prints `error: <message>` (its first line) on stderr; returns exit code 2."""
    text = str(message).strip().splitlines()
    print(f"error: {text[0] if text else type(message).__name__}", file=sys.stderr)
    return EXIT_ERROR


def os_error_message(err: OSError) -> str:
    """One line for a file-system error: which path, and what went wrong."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    reason = reasons.get(err.errno, err.strerror or str(err))
    where = err.filename or ""
    return f"{where}: {reason}" if where else reason


def out_of_memory_message(err: BaseException, batch_size: int | None) -> str | None:
    """One line if `err` is XLA failing to allocate memory for a batch program (on
    any device, the CPU included), else None. XLA reports it as a
    `JaxRuntimeError` when the result is first read, with a traceback that does
    not say what to change."""
    import jax

    text = str(err)
    if not (isinstance(err, jax.errors.JaxRuntimeError)
            and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text)):
        return None
    device = jax.devices()[0]
    batch = f"with batches of {batch_size} slices " if batch_size else ""
    return (f"out of memory {batch}on {jax.device_count()} {device.platform} device(s); "
            f"lower --batch-size (XLA: {text.strip().splitlines()[0]})")


COMPILATION_CACHE_BYTES = 2**30


def use_compilation_cache() -> str | None:
    """Keeps XLA's compiled programs on disk between runs (JAX's persistent
    compilation cache), so that a command run again skips most of its compiling
    (docs/performance.md); a cached program gives the same outputs, bit for bit.

    The folder is JAX_COMPILATION_CACHE_DIR where set, else
    $XDG_CACHE_HOME/bh_jax/xla (~/.cache/bh_jax/xla), there at most
    `COMPILATION_CACHE_BYTES` (the least recently used programs go first); where
    that folder cannot be written, one warning and no cache.
    JAX_ENABLE_COMPILATION_CACHE=false turns it off. Call before the first
    compile. Returns the folder, or None when off.
    """
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir  # the user's, with their settings
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        folder = str(writable_folder(os.path.join(base, "bh_jax", "xla"),
                                     "the compilation cache"))
    except ValueError as err:
        print(f"warning: {err}; compiling anew every run", file=sys.stderr)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    return folder


def without_compilation_cache() -> None:
    """Compiles for real in this process (and in the commands it runs in it), unless
    JAX_COMPILATION_CACHE_DIR asks for a cache: for benchmarks, which time compiles.
    Call before the first compile."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_enable_compilation_cache", False)


def run(body: Callable[[], int], batch_size: int | None = None,
        compilation_cache: bool = True) -> int:
    """Runs a command's body, with the compilation cache (`use_compilation_cache`;
    `compilation_cache` False: `without_compilation_cache`); turns the errors a user
    can act on into one line and exit code 2: bad inputs, settings or checkpoints
    (ValueError and its kinds), diverged training, file-system errors and running
    out of memory. Anything else is a bug and keeps its traceback. Ctrl-C (or a job
    limit's SIGINT) is one line and exit code 130."""
    import jax

    if compilation_cache:
        use_compilation_cache()
    else:
        without_compilation_cache()
    try:
        return body()
    except KeyboardInterrupt:
        print("interrupted: finished outputs and checkpoints are complete (each is written "
              "atomically); run the same command to continue", file=sys.stderr)
        return 130
    except (ValueError, FloatingPointError) as err:
        return fail(err)
    except OSError as err:
        return fail(os_error_message(err))
    except jax.errors.JaxRuntimeError as err:
        message = out_of_memory_message(err, batch_size)
        if message is None:
            raise
        return fail(message)


def writable_folder(path: str | os.PathLike, option: str) -> Path:
    """`path` as a folder that exists (created if needed) and can be written to;
    ValueError naming the option otherwise. Checked before any work, so that a
    run never computes results it cannot save."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder ({option})")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".bh_jax_write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{path}: cannot write there ({option}: "
                         f"{os_error_message(err).split(': ')[-1]})") from None
    return path
