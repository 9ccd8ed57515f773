"""A cancel scope that remembers why it was cut.

Whoever ends a piece of work from outside (deleting its session, evicting a slow
viewer, a capture failing for good) cuts its lifeline with a reason; the owner,
on leaving the scope, raises that reason as a plain exception. So cleanup falls
out of cancellation, and the caller still learns *why* it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio


class Lifeline:
    __slots__ = ("_on_cut", "reason", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason: BaseException | None = None
        self._on_cut: list[Callable[[], None]] = []

    @property
    def cut_already(self) -> bool:
        return self.reason is not None

    def cut(self, reason: BaseException) -> None:
        """Cancel the work; the first reason given wins."""
        first = self.reason is None
        if first:
            self.reason = reason
        self.scope.cancel()
        if first:
            for callback in self._on_cut:
                callback()

    def on_cut(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, once) when the lifeline is cut; at once if it was.

        For whoever must act when the owner cannot: an owner blocked in a shielded
        send does not see its cancellation until the send returns."""
        if self.reason is not None:
            callback()
        else:
            self._on_cut.append(callback)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the body inside the scope; if it was cut, raise the reason on exit."""
        with self.scope:
            yield
        if self.scope.cancelled_caught and self.reason is not None:
            raise self.reason
