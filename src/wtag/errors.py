"""The one exception type for errors a user can cause (bad file, bad parameter, bad request).

The CLI turns it into a one-line message and exit code 2; the server turns it into a 4xx.
"""
from __future__ import annotations


class WtagError(Exception):
    """A problem with user input: the message names the input and what is wrong with it."""
