from __future__ import annotations

import pytest

from wtag.errors import WtagError, exit_status


def _raise(exc: BaseException) -> int:
    raise exc


def test_exit_status_turns_user_errors_into_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: 0, "prog") == 0
    assert exit_status(lambda: 3, "prog") == 3
    assert exit_status(lambda: _raise(WtagError("input 'hl' is empty")), "wtag score") == 2
    assert capsys.readouterr().err == "wtag score: error: input 'hl' is empty\n"
    assert exit_status(lambda: _raise(KeyboardInterrupt()), "prog") == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


def test_exit_status_lets_bugs_raise() -> None:
    with pytest.raises(ZeroDivisionError):
        exit_status(lambda: 1 // 0, "prog")
