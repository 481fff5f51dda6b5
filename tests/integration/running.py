"""A worker (anything with ``async run(stop)``) run as an asyncio task in a thread; a count of a
dispatcher's rounds."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, TypeVar

from consumers.dispatch import Dispatcher

W = TypeVar("W")


class Running(Generic[W]):
    """Starts ``worker.run(stop)`` on an event loop in a daemon thread; ``stop()`` ends it and
    raises whatever the worker raised."""

    def __init__(self, worker: W) -> None:
        self.worker = worker
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        run: Any = getattr(self.worker, "run")  # noqa: B009 - any worker with run(stop)
        task = asyncio.create_task(run(self.stop_event))
        self.ready.set()
        await task

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{type(self.worker).__name__} did not stop"
        if self.error is not None:
            raise self.error


class DispatchRounds:
    """Counts a dispatcher's finished rounds (``dispatch_pending`` and ``reconcile`` calls), as
    the consumer worker's sender makes them: a positive marker that it has looked at the
    database again, to wait for before asserting that it did nothing."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.sends = 0
        self.reconciles = 0
        dispatch_pending, reconcile = dispatcher.dispatch_pending, dispatcher.reconcile

        def counted_dispatch_pending(*args: Any, **kwargs: Any) -> int:
            claimed = dispatch_pending(*args, **kwargs)
            self.sends += 1
            return claimed

        def counted_reconcile(*args: Any, **kwargs: Any) -> dict[str, int]:
            counts = reconcile(*args, **kwargs)
            self.reconciles += 1
            return counts

        dispatcher.dispatch_pending = counted_dispatch_pending  # type: ignore[method-assign]
        dispatcher.reconcile = counted_reconcile  # type: ignore[method-assign]
