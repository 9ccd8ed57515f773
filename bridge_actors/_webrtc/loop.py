"""One asyncio event loop in one dedicated thread, driven from the Trio program.

aiortc is written for asyncio; the bridge is Trio. Rather than run the whole
server under trio-asyncio, the WebRTC peers live on a private asyncio loop in a
thread of their own, and Trio code hands it coroutines with :meth:`AsyncioThread.run`.
A Trio task that is cancelled while it waits cancels the asyncio task it was
waiting for, so Trio's cancellation reaches the asyncio side; whoever owns a peer
closes it in a shielded call (see :mod:`.peer`), so a cancelled viewer always
closes its peer connection.

The loop is started on first use and stopped by :meth:`AsyncioThread.stop`, which
cancels whatever asyncio tasks are left, closes the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

log = logging.getLogger("bridge_actors.webrtc")

T = TypeVar("T")

__all__ = ["AsyncioThread", "AsyncioThreadStatistics"]


@dataclass(frozen=True, slots=True)
class AsyncioThreadStatistics:
    running: bool
    calls: int  # coroutines handed to the loop, ever
    pending_tasks: int  # asyncio tasks alive on the loop now


class AsyncioThread:
    """A private asyncio loop in a thread; :meth:`run` awaits a coroutine on it from Trio."""

    def __init__(self, name: str = "bridge-webrtc") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.calls = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve_loop, args=(loop,), name=self.name, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            log.debug("asyncio loop for WebRTC started in thread %s", self.name)
        return self._loop

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the asyncio loop and return its result here.

        Cancelling the calling Trio task cancels the asyncio task."""
        loop = self._ensure_started()
        self.calls += 1
        future = asyncio.run_coroutine_threadsafe(_call(fn, args), loop)
        await _wait_for(future)
        return future.result()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run a plain function on the loop soon, without waiting for it."""
        loop = self._ensure_started()
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing left to feed
            loop.call_soon_threadsafe(fn, *args)

    async def stop(self) -> None:
        """Cancel what runs on the loop, close it and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        await trio.to_thread.run_sync(thread.join, abandon_on_cancel=False)
        log.debug("asyncio loop for WebRTC stopped")

    def pending_tasks(self) -> int:
        loop = self._loop
        if loop is None:
            return 0
        future = asyncio.run_coroutine_threadsafe(_count_tasks(), loop)
        try:
            return future.result(timeout=5)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return -1

    def statistics(self) -> AsyncioThreadStatistics:
        return AsyncioThreadStatistics(
            running=self.running, calls=self.calls, pending_tasks=self.pending_tasks()
        )


async def _call(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)


async def _count_tasks() -> int:
    current = asyncio.current_task()
    return sum(1 for task in asyncio.all_tasks() if task is not current)


async def _wait_for(future: concurrent.futures.Future[Any]) -> None:
    """Wait in Trio for a future completed on another thread; cancelling cancels it."""
    if future.done():
        await trio.lowlevel.checkpoint()
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except trio.Cancelled:
        # Cancels the asyncio task too; it unwinds on its own loop. Work that must
        # finish (closing a peer) is awaited shielded by its owner instead.
        future.cancel()
        raise


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
