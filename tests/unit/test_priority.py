import os

import pytest

from abtest.server import process as server


def test_client_priority_is_raised_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    nice = {"v": 0}
    monkeypatch.setattr(os, "getpriority", lambda which, who: nice["v"])
    monkeypatch.setattr(os, "setpriority", lambda which, who, v: nice.__setitem__("v", v))
    monkeypatch.setattr(server, "SERVER_NICE", None)
    assert server.raise_client_priority(5) == -5
    assert server.raise_client_priority(5) == -5  # a second Runner does not boost again
    assert server.SERVER_NICE == 0  # servers start at the original niceness


def test_client_priority_not_permitted_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(which: int, who: int, v: int) -> None:
        raise PermissionError

    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(server, "SERVER_NICE", None)
    assert server.raise_client_priority(5) is None
    assert server.SERVER_NICE is None
