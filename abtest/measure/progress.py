"""What the runner tells a display (arm begun, request done, arm ended, notes); the CLI draws it."""

from __future__ import annotations

from typing import Protocol

from ..records import RequestRecord


class Progress(Protocol):
    """What the runner tells a display; the CLI implements it with rich, --quiet with nothing."""

    def arm_begin(self, arm: str, total: int) -> None: ...
    def request_done(self, record: RequestRecord) -> None: ...
    def arm_end(self, arm: str, ok: bool, message: str) -> None: ...
    def note(self, message: str) -> None: ...


class NullProgress:
    def arm_begin(self, arm: str, total: int) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def arm_end(self, arm: str, ok: bool, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass
