"""The errors a user of the ``fctc`` program can cause, and their one-line messages.

Every such error ends the program with one line on stderr, ``fctc <command>: error:
<message>``, and exit status 2: the message names the bad value (a config key with its
``file:line``, a manifest line, a file, a flag) and what to do. :func:`user_error_message`
turns an exception into that message, or returns None for an exception that is a bug (which
keeps its traceback).
"""

from __future__ import annotations

import errno
import os

from ..checkpoint import CheckpointError
from ..data import AudioError, DataError, ManifestError
from ..decode import DecoderUnavailable
from ..train import NonFiniteLossError

__all__ = ["ConfigError", "RunError", "user_error_message"]


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the bad key.

    Args:
        message: the one-line message.
        key: the dotted key at fault, when there is one (for ``file:line`` prefixes).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the configuration (a locked run folder,
    no usable training utterance, a full disk); the message says what to do."""


_USER_ERRORS = (ConfigError, RunError, ManifestError, DataError, AudioError, CheckpointError,
                DecoderUnavailable, NonFiniteLossError, FileNotFoundError)


def _os_error(e: OSError) -> str:
    """``<file>: <reason>`` of an operating-system error, with a hint for the common ones."""
    where = e.filename if e.filename is not None else "a file"
    reason = e.strerror or str(e)
    hints = {
        errno.EACCES: "choose a folder you can write to, or fix its permissions",
        errno.EPERM: "choose a folder you can write to, or fix its permissions",
        errno.EROFS: "the file system is read-only; choose another folder",
        errno.ENOSPC: "free some disk space (or choose another folder) and run again",
        errno.EISDIR: "give a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }
    hint = hints.get(e.errno)
    return f"{os.fspath(where)}: {reason}" + (f"; {hint}" if hint else "")


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of an error a user can cause, or None for any other error.

    Args:
        e: the exception that stopped a command.

    Returns:
        The message (newlines folded into ``"; "``), or None when ``e`` is not a user error.
    """
    if isinstance(e, DataError):
        message = f"{e.detail}; fix or remove it, or set data.on_error: skip"
    elif isinstance(e, OSError) and e.errno is not None and not isinstance(e, AudioError):
        message = _os_error(e)  # raised by the operating system, not by fctc
    elif isinstance(e, _USER_ERRORS) or isinstance(e, OSError):
        message = str(e)
    else:
        return None
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())
