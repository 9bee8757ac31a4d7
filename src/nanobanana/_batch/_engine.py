"""`Batch`: what ``client.batch()`` returns, and the engine that runs it.

The engine runs in a task of its own (the *host*), which pulls the input lazily and
starts one task per item while a bounded window has room; results travel to the
consumer through a memory stream without a buffer, so a consumer that stops reading
stops the batch from starting items, and nothing per finished item is kept.

The host is not a child of the consumer's task: a task group entered in an async
generator and left at a ``yield`` would be closed from another task when the
consumer leaves its loop early (asyncio closes abandoned generators in a task of
their own), which anyio refuses. So ``async with`` (or the end of the loop, or
``aclose()``) stops the host and waits for it, and that is deterministic.

Stopping keeps the journal true: items that sent nothing stop at once; an async-mode
item whose generation request was sent but not answered yet is given a few seconds
for its answer, so that its id is recorded rather than lost; every other item stops at
once, its id already on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from nanobanana._batch._item import Item, Settings, run_item
from nanobanana._batch._journal import Journal
from nanobanana._batch._keys import Keys
from nanobanana._batch._records import SENDING, PlanKind, outcome_record, plan_for, replay
from nanobanana._batch._values import BatchRequest, BatchResult, BatchStats, check_options
from nanobanana._http import current_loop_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from typing_extensions import Self

    from nanobanana._client import AsyncNanoBanana
    from nanobanana._jobs import PollPolicy

__all__ = ["DEFAULT_ITEM_TIMEOUT", "Batch"]

MODES = ("sync", "stream", "async")
#: An item's default deadline, from its first request: a 10-minute wait for the
#: generation (the poll policy's default) and time to save its images.
DEFAULT_ITEM_TIMEOUT = 900.0
#: How long a stop waits for the answer to an async-mode generation request already
#: sent (it comes in well under a second), so that its id is recorded, not lost.
SUBMIT_GRACE = 10.0
# The window of items under way: enough to keep the governor busy, no more. It starts
# at twice the account's limit, plus what the downloads and, in async mode, the
# server's async tasks take (the cap the client learned from a 503; until then its
# docs' example, "activeTasks": 10), and grows while the governor has room to spare
# (async items spend most of their time waiting between polls, not in it), up to a
# bound on memory.
_MIN_WINDOW = 16
_ASYNC_TASKS_GUESS = 10
_MAX_WINDOW = 1000
# How often a full window looks again whether the governor has room (it may free up
# without an item of the batch finishing).
_RECHECK = 0.05


class _Window:
    """A limit on items under way that follows the governor (`Batch._base_window`)."""

    def __init__(self, base: Callable[[], int], grow: Callable[[], bool]) -> None:
        self._base = base
        self._grow = grow
        self.used = 0
        self._freed: anyio.Event | None = None

    async def acquire(self) -> None:
        while self.used >= self._base():
            if self.used < _MAX_WINDOW:
                # Let the items just started reach the governor before asking it.
                await anyio.lowlevel.checkpoint()
                if self._grow():
                    break
            self._freed = anyio.Event()
            with anyio.move_on_after(_RECHECK):
                await self._freed.wait()
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        if self._freed is not None:
            self._freed.set()


def _writable_folder(path: Path) -> None:
    """Create ``path`` if missing and check that files can be written there."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"download_dir {os.fspath(path)!r} is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):  # a real write: ACLs and read-only mounts too
        pass


def _spawn(run: Callable[[], Awaitable[None]]) -> asyncio.Task[None] | None:
    """Start ``run`` in a task of its own, on asyncio or trio."""
    loop = current_loop_token()
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop.create_task(run(), name="nanobanana-batch")  # type: ignore[arg-type]
    import trio  # noqa: PLC0415 - only on trio

    context = contextvars.copy_context()
    trio.lowlevel.spawn_system_task(run, name="nanobanana-batch", context=context)
    return None


class Batch:
    """A batch of generations under way: an async iterator of `BatchResult`.

    Get one from ``client.batch(...)``. Results come in the order items finish, one
    per item of the input. Use it as an async context manager, so that leaving the
    block (a ``break``, an exception, a cancellation) stops the batch then and there:

    ```python
    async with client.batch(prompts, journal="batch.jsonl") as results:
        async for result in results:
            print(result.index, result.status, result.files)
    ```

    A plain ``async for result in client.batch(...)`` works too when the loop runs to
    its end; left early, the batch stops only once the loop's iterator is
    garbage-collected (as a stream does), so prefer ``async with``.

    Errors of one item are that item's ``error``. The iteration itself raises only
    for a misuse (an input item that is not a prompt or a `BatchRequest`, a key used
    twice), an exception of the input iterable, a journal that cannot be written, and
    errors after which every later item would fail too (401, 403, 402, no API key):
    the batch then stops starting items, yields the results of those under way, and
    raises the error.
    """

    def __init__(
        self,
        client: AsyncNanoBanana,
        items: Iterable[str | BatchRequest] | AsyncIterable[str | BatchRequest],
        *,
        mode: str = "async",
        download_dir: str | os.PathLike[str] | None = None,
        journal: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        item_timeout: float | None = DEFAULT_ITEM_TIMEOUT,
        poll_policy: PollPolicy | None = None,
        model: str | None = None,
        aspect_ratio: str | None = None,
        quantity: int | None = None,
        reference_image_urls: Sequence[str] | None = None,
    ) -> None:
        if isinstance(items, (str, bytes, BatchRequest)):
            raise TypeError("client.batch() takes an iterable of prompts, not a single one")
        if not isinstance(items, (Iterable, AsyncIterable)):
            raise TypeError(
                f"client.batch() takes an iterable or async iterable of prompts, "
                f"not {type(items).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        if item_timeout is not None and (
            isinstance(item_timeout, bool)
            or not isinstance(item_timeout, (int, float))
            or not item_timeout > 0
        ):
            raise ValueError("item_timeout must be a positive number of seconds or None")
        check_options(
            model=model,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
            reference_image_urls=reference_image_urls,
        )
        self._client = client
        self._items = items
        self._mode = mode
        self._download_dir = Path(download_dir) if download_dir is not None else None
        self._journal_path = Path(journal) if journal is not None else None
        self._retry_failed = retry_failed
        self._item_timeout = float(item_timeout) if item_timeout is not None else None
        self._poll_policy = poll_policy
        self._defaults: dict[str, Any] = {
            "model": model,
            "aspect_ratio": aspect_ratio,
            "quantity": quantity,
            "reference_image_urls": list(reference_image_urls) if reference_image_urls else None,
        }
        self._journal: Journal | None = None
        self._keys = Keys()
        self._live: set[Item] = set()
        self._window = _Window(self._base_window, self._may_grow)
        self._send: MemoryObjectSendStream[BatchResult] | None = None
        self._receive: MemoryObjectReceiveStream[BatchResult] | None = None
        self._pulling: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._host: asyncio.Task[None] | None = None
        self._started = False
        self._entered = False
        self._closing = False
        self._error: BaseException | None = None  # raised at the end of the iteration
        self._stats: dict[str, int] = dict.fromkeys(
            ("done", "failed", "from_journal", "credits_spent"), 0
        )
        self._unfinished: list[str] = []
        self._unanswered = 0
        self._delivering = 0  # results waiting for the consumer to take them

    def __repr__(self) -> str:
        stats = self.stats()
        return f"<Batch mode={self._mode!r} done={stats.done} running={stats.running}>"

    # -- what a progress display or an interrupted program asks -----------------------

    def stats(self) -> BatchStats:
        """Counts so far: done, failed, running, credits spent (cheap; any task or thread)."""
        live = tuple(self._live)  # one atomic copy: a display thread may call this
        running = len(live)
        awaiting = sum(1 for item in live if item.sent and item.generation_id is None)
        return BatchStats(
            done=self._stats["done"],
            failed=self._stats["failed"],
            from_journal=self._stats["from_journal"],
            running=running,
            awaiting_id=awaiting if running else self._unanswered,
            credits_spent=self._stats["credits_spent"],
        )

    def unfinished_ids(self) -> tuple[str, ...]:
        """Generations this run started and did not finish, once the batch has stopped.

        Each is paid for and still running or finished on the server:
        ``client.job(generation_id).wait()`` picks it up (with a journal, the next
        run of the batch does).
        """
        return tuple(self._unfinished)

    # -- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._entered = True
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[BatchResult]:
        if self._entered:
            return self._results()
        return self._run_to_end()

    async def _run_to_end(self) -> AsyncIterator[BatchResult]:
        """A plain ``async for``: start, yield every result, stop on the way out."""
        await self._start()
        try:
            async for result in self._results():
                yield result
        finally:
            await self.aclose()

    async def _results(self) -> AsyncIterator[BatchResult]:
        receive = self._receive
        if receive is None:
            raise RuntimeError("the batch has not started: use `async with` or `async for`")
        while True:
            try:
                result = await receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                break
            yield result
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def _start(self) -> None:
        if self._started:
            raise RuntimeError("a batch runs once; call client.batch() again for another run")
        self._started = True
        self._client._requester._check_usable()  # closed, or another event loop
        if self._download_dir is not None:
            await anyio.to_thread.run_sync(_writable_folder, self._download_dir)
        if self._journal_path is not None:
            self._journal = await Journal.open(self._journal_path)
        self._send, self._receive = anyio.create_memory_object_stream[BatchResult](0)
        self._pulling = anyio.CancelScope()
        self._done = anyio.Event()
        self._host = _spawn(self._run)

    async def aclose(self) -> None:
        """Stop the batch: no new items, items under way stopped, journal closed.

        Idempotent, and safe to call from any task. Returns when everything the batch
        started has ended (at most a few seconds for an async-mode generation request
        already sent, whose id is then recorded).
        """
        if self._closing or not self._started:
            if self._done is not None:
                with anyio.CancelScope(shield=True):
                    await self._done.wait()
            return
        self._closing = True
        if self._receive is not None:
            self._receive.close()  # results from now on have no one to go to
        if self._pulling is not None:
            self._pulling.cancel()
        for item in list(self._live):
            self._interrupt(item)
        if self._done is not None:
            with anyio.CancelScope(shield=True):
                await self._done.wait()

    def _interrupt(self, item: Item) -> None:
        item.stopped = True
        if self._mode == "async" and item.sent and item.generation_id is None:
            item.stop_when_known = True  # its answer brings the id: wait for it, briefly
            item.scope.deadline = min(item.scope.deadline, anyio.current_time() + SUBMIT_GRACE)
        else:
            item.scope.cancel()

    def _stop(self, reason: BaseException) -> None:
        """Start no more items; stop those that sent nothing; raise ``reason`` at the end."""
        if self._error is None:
            self._error = reason
        if self._pulling is not None:
            self._pulling.cancel()
        for item in list(self._live):
            if item.waiting:
                item.stopped = True
                item.scope.cancel()

    # -- the host ---------------------------------------------------------------------

    def _base_window(self) -> int:
        """Twice the account's limit, the downloads, and the async tasks (async mode)."""
        governor = self._client.governor_stats()
        size = 2 * governor.limit + self._client._download_concurrency
        if self._mode == "async":
            size += governor.task_limit or _ASYNC_TASKS_GUESS
        return max(_MIN_WINDOW, size)

    def _may_grow(self) -> bool:
        """Beyond the base window: while async items leave the governor idle.

        Not when submissions already wait for the server's async-task cap, nor for
        sync and stream items, which hold a slot for their whole generation; items
        waiting for the consumer to take their result need nothing: more would only
        queue.
        """
        if self._mode != "async" or self._delivering:
            return False
        governor = self._client.governor_stats()
        return (
            governor.waiting == 0
            and governor.tasks_waiting == 0
            and governor.active < governor.limit
        )

    async def _run(self) -> None:
        settings = Settings(
            client=self._client,
            mode=self._mode,
            defaults=self._defaults,
            download_dir=self._download_dir,
            journal=self._journal,
            item_timeout=self._item_timeout,
            poll_policy=self._poll_policy,
            stop=self._stop,
            charged=self._charged,
        )
        assert self._pulling is not None  # noqa: S101 - made by _start
        try:
            async with anyio.create_task_group() as group:
                with self._pulling:
                    try:
                        await self._pull(group, settings)
                    except Exception as exc:  # noqa: BLE001 - the input's own, raised at the end
                        self._stop(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: raised to the consumer, not lost
            if self._error is None:
                inner: Sequence[BaseException] = getattr(
                    exc, "exceptions", ()
                )  # a group: one error, most often
                self._error = inner[0] if len(inner) == 1 else exc
        finally:
            with anyio.CancelScope(shield=True):
                if self._journal is not None:
                    try:
                        await self._journal.aclose()
                    except OSError as exc:
                        self._error = self._error or exc
                assert self._send is not None  # noqa: S101 - set before the host starts
                await self._send.aclose()
                assert self._done is not None  # noqa: S101
                self._done.set()

    async def _pull(self, group: TaskGroup, settings: Settings) -> None:
        """Take items from the input, one at a time, while the window has room."""
        source = self._items
        iterator: Any
        if isinstance(source, AsyncIterable):
            is_async, iterator = True, aiter(source)
        else:
            is_async, iterator = False, iter(source)
        index = -1
        while not self._closing and self._error is None:
            try:
                raw = await anext(iterator) if is_async else next(iterator)
            except (StopIteration, StopAsyncIteration):
                return
            index += 1
            request = self._request(raw, index)
            key = request.key
            plan = plan_for(None, retry_failed=False, download_dir=None)
            if self._journal is not None:
                key = self._keys.key(request, index=index)
                record = self._journal.take(key)
                plan = plan_for(
                    record, retry_failed=self._retry_failed, download_dir=self._download_dir
                )
                if plan.kind is PlanKind.REPLAY and plan.record is not None:
                    result = replay(plan.record, index=index, prompt=request.prompt, key=key)
                    if plan.record.get("status") == SENDING:
                        self._journal.write(outcome_record(result))  # its conclusion
                    await self._deliver(result)
                    continue
            await self._window.acquire()
            item = Item(index=index, request=request, key=key, plan=plan, settings=settings)
            self._live.add(item)
            group.start_soon(self._run_item, item)

    @staticmethod
    def _request(raw: object, index: int) -> BatchRequest:
        if isinstance(raw, BatchRequest):
            return raw
        if isinstance(raw, str):
            try:
                return BatchRequest(prompt=raw)
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        raise TypeError(
            f"item {index} is a {type(raw).__name__}; a batch takes prompts (str) and "
            "BatchRequest values"
        )

    async def _run_item(self, item: Item) -> None:
        try:
            try:
                result = await run_item(item)
            finally:
                self._live.discard(item)  # done or not, no longer running
            if result is None:  # stopped before it ended
                if item.generation_id is not None:
                    self._unfinished.append(item.generation_id)
                elif item.sent:
                    self._unanswered += 1
                return
            if self._journal is not None:
                try:
                    self._journal.write(outcome_record(result))
                except OSError as exc:
                    self._stop(exc)
            await self._deliver(result)
        finally:
            self._window.release()  # after the consumer took it: a slow reader slows us

    def _charged(self, amount: int) -> None:
        self._stats["credits_spent"] += amount

    async def _deliver(self, result: BatchResult) -> None:
        self._stats["done"] += 1
        self._stats["failed"] += not result.ok
        self._stats["from_journal"] += result.from_journal
        assert self._send is not None  # noqa: S101 - set before the host starts
        self._delivering += 1
        try:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._send.send(result)  # unless the consumer left; the journal has it
        finally:
            self._delivering -= 1
