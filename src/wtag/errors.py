"""The one exception type for errors a user can cause (bad file, bad parameter, bad request).

The CLI turns it into a one-line message and exit code 2; the server turns it into a 4xx.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class WtagError(Exception):
    """A problem with user input: the message names the input and what is wrong with it."""


def exit_status(main: Callable[[], int], prog: str) -> int:
    """Run a command's body: a WtagError becomes one line on stderr and status 2, Ctrl-C status 130,
    never a traceback. Every command-line entry (``wtag``, ``python -m serving``, the benchmarks) uses it."""
    try:
        return int(main())
    except WtagError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
