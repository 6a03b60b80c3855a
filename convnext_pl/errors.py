"""Errors a user can cause and fix, and the one way every entry point reports them.

Anything raised as a :class:`UserError` is reported by the command lines (``main.py``, ``python -m
convnext_pl.export.formats``, ``python -m convnext_pl.analysis``, ``python -m convnext_pl.roadmap``) as one line,
``error: <sentence>``, and exit code 2, without a traceback: the message itself must say what is wrong and what to
do. :func:`one_line_errors` does that for a block of code, :class:`OneLineArgumentParser` for argparse's own errors.
"""

import argparse
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2  # argparse's and LightningCLI's code for a usage error


class UserError(Exception):
    """A mistake in the user's input (a path, a name, a config value) rather than a bug in this package."""


class WorkerUserError(UserError):
    """A UserError raised where a DataLoader worker may raise it. The worker's error comes back to the main
    process as ``type(err)(text)``, where ``text`` is "Caught ... in DataLoader worker process N. Original
    Traceback ..." ending with our message; the constructor recovers the original sentence from that text, so the
    error stays one line."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def exit_with_error(message: str) -> NoReturn:
    """Print ``error: <message>`` to stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT_CODE)


def find_user_error(error: BaseException) -> UserError | None:
    """``error`` if it is a :class:`UserError`, else the first one that caused it.

    Libraries wrap what they call: jsonargparse re-raises an error of a class's ``__init__`` as a ValueError that
    lists every type it tried, with the original as its ``__cause__``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """The user's sentence of an error: an error raised in a DataLoader worker comes back with the worker's
    traceback in its message, the sentence on its last line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return last.removeprefix(f"{UserError.__module__}.{UserError.__name__}: ")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a :class:`UserError` raised in the block (or one that caused another error) into one line and exit 2."""
    try:
        yield
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        exit_with_error(one_line(user_error))


PARSER_HINT = "; --help lists the options"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2 (not the usage text), like ``main.py``."""

    def error(self, message: str) -> NoReturn:
        exit_with_error(message + PARSER_HINT)


# jsonargparse's lines that only give the structure of a nested error message (the key, the tried types).
_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:")


def parser_error_line(message: str) -> str:
    """One line for jsonargparse's nested error message: the full option name, what was wrong, the value given.

    ``Parser key "model": ... Problem with given class_path 'ImageClassifier': Parser key "lr": Expected a <class
    'float'>. Got value: abc`` becomes ``model.init_args.lr: expected a float. Got value: abc``. A message
    without that structure ("unrecognized arguments: ...") is returned as it is.
    """
    lines = [line.strip().removeprefix("- ") for line in message.strip().splitlines() if line.strip()]
    keys, reason, given = [], None, None
    for line in lines:
        key = re.fullmatch(r'Parser key "([^"]+)":\s*(.*)', line)
        if reason is None and key:
            keys.append(key[1])
            reason = key[2] or None
        elif reason is None and line.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif reason is None and not line.startswith(_STRUCTURE):
            reason = line
        elif reason is not None and line.startswith("Given value:") and "NestedArg(" not in line:
            given = line.removeprefix("Given value:").strip()
            break
    if not keys or reason is None:
        return " ".join(lines)
    unknown = re.fullmatch(r"Option '([^']+)' is not accepted", reason)
    if unknown:
        return f"{'.'.join([*keys, unknown[1]])} is not an option here"
    reason = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", reason)
    reason = reason[0].lower() + reason[1:]
    # jsonargparse writes "Expected a <type>" for every type: "expected a int" reads "expected an int". Only
    # jsonargparse's words, not the value the user gave after "Got value:".
    words, got, value = reason.partition("Got value:")
    # "expected a typing.Literal['whole', 'slide']" reads "expected one of 'whole', 'slide'".
    words = re.sub(r"\ba typing\.Literal\[(.*)\]", r"one of \1", words)
    reason = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", words) + got + value
    if given is not None and "Got value" not in reason:
        reason += f", got {given}"
    return f"{'.'.join(keys)}: {reason}"
