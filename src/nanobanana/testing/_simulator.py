"""`Simulator`: the fake service on real loopback sockets, in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana.testing._app import API_PREFIX, SimApp
from nanobanana.testing._catalogue import DEFAULT_MODEL, DEFAULT_MODELS, SimModel
from nanobanana.testing._clock import SimClock
from nanobanana.testing._config import URL_TTL, SimulatorConfig
from nanobanana.testing._faults import DEFAULT_RANDOM_KINDS, PRESETS, Fault
from nanobanana.testing._hold import Hold
from nanobanana.testing._records import GenerationRecord, LedgerEntry, RequestRecord
from nanobanana.testing._server import HttpServer
from nanobanana.testing._state import Account, State
from nanobanana.testing._timing import INSTANT, GenerationTime

if TYPE_CHECKING:
    from typing_extensions import Self

    from nanobanana import AsyncNanoBanana

__all__ = ["Simulator"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 30.0
_POLL = 0.005


def _header_value(value: str | float | None) -> str | None:
    return value if value is None or isinstance(value, str) else f"{value:g}"


class Simulator:
    """A stateful fake of the Nano Banana service, served on loopback sockets.

    The API and the image CDN listen on two ports (two origins) of ``host``, served by
    a background thread with its own event loop, so that the simulator works the same
    from asyncio, trio or plain synchronous code. State is shared with the caller's
    thread under a lock: the inspection methods may be called at any time.

    Example:
        >>> async with Simulator(credits=10) as sim:
        ...     async with sim.client() as client:
        ...         generation = await client.generate("a banana [slow=0.1]")
        ...     assert sim.credits() == 9

    Args:
        api_key: The key of the account that exists from the start.
        credits: That account's balance.
        api_access: Whether that account may use the API (else 403).
        concurrency_limit: That account's limit on requests in flight (else 429).
        pro: Whether that account may use models that require pro.
        generation_time: How long a generation takes (real time): sync requests are
            held that long, streams send their status events over it, async tasks
            finish after it. Seconds, or a range to draw each generation's time from
            (``"0.5-2"``, ``(0.5, 2)``, ``"10-60@20"``: see `GenerationTime`),
            reproducible with ``seed``. Also settable per model and per call.
        heartbeat_interval: Seconds between stream heartbeats (15 in the stream docs).
        seed: Makes ids, image URL signatures and generation times drawn from a
            range reproducible.
        models: The catalogue (default: the docs' model and the live ids).
        default_model: The model used when ``selectedModel`` is omitted.
        max_quantity: The server's cap on ``quantity`` (values above are clamped).
        max_async_tasks: The server-wide cap on running async tasks (else 503).
        retry_after: ``Retry-After`` on 429 (``None`` to omit it).
        busy_retry_after: ``Retry-After`` on 503 (absent by default).
        url_ttl: Seconds until image URLs expire (15 days).
        stream_event_ids: Put ``generationId`` on every stream event, not only on
            ``complete``.
        image_size: Width and height of the generated PNGs.
        clock_start: Where the simulated clock starts (default: now).
        admin: Serve the admin API under ``/_sim/``.
        host: The interface to listen on.
        port: The API port (0: any free port).
        cdn_port: The CDN port (0: any free port).
    """

    def __init__(
        self,
        *,
        api_key: str = "nb_test_key",
        credits: int = 100,  # noqa: A002 - the documented option name
        api_access: bool = True,
        concurrency_limit: int = 1,
        pro: bool = False,
        generation_time: float | str | tuple[float, float] | GenerationTime = INSTANT,
        heartbeat_interval: float = 15.0,
        seed: int | None = None,
        models: Iterable[SimModel] = DEFAULT_MODELS,
        default_model: str = DEFAULT_MODEL,
        max_quantity: int = 4,
        max_async_tasks: int = 10,
        retry_after: str | float | None = "1",
        busy_retry_after: str | float | None = None,
        url_ttl: float = URL_TTL,
        stream_event_ids: bool = False,
        image_size: int = 64,
        clock_start: dt.datetime | float | None = None,
        admin: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
    ) -> None:
        if isinstance(clock_start, dt.datetime):
            clock_start = clock_start.timestamp()
        self._config = SimulatorConfig(
            api_key=api_key,
            credits=credits,
            api_access=api_access,
            concurrency_limit=concurrency_limit,
            pro=pro,
            generation_time=generation_time,
            heartbeat_interval=heartbeat_interval,
            seed=seed,
            models=tuple(models),
            default_model=default_model,
            max_quantity=max_quantity,
            max_async_tasks=max_async_tasks,
            retry_after=_header_value(retry_after),
            busy_retry_after=_header_value(busy_retry_after),
            url_ttl=url_ttl,
            stream_event_ids=stream_event_ids,
            image_size=image_size,
            clock_start=clock_start,
            admin=admin,
        )
        self._state = State(self._config)
        self._host = host
        self._ports = (port, cdn_port)
        self._bound: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        """Bind both ports and start serving in a background thread.

        Raises:
            RuntimeError: If already running, or if the server failed to start.
            OSError: If a port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        api_sock = socket.create_server((self._host, self._ports[0]), family=family)
        try:
            cdn_sock = socket.create_server((self._host, self._ports[1]), family=family)
        except BaseException:
            api_sock.close()
            raise
        self._bound = (api_sock.getsockname()[1], cdn_sock.getsockname()[1])
        self._state.cdn_base_url = self.cdn_base_url
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(api_sock, cdn_sock), name="nanobanana-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise RuntimeError("the simulator failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving: drop open connections and join the thread (idempotent)."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(_STOP_TIMEOUT)
        self._thread = self._loop = self._stop_event = None
        self._bound = None
        self._state.cdn_base_url = None

    @property
    def running(self) -> bool:
        """Whether the simulator is serving."""
        return self._thread is not None

    def _run(self, api_sock: socket.socket, cdn_sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(api_sock, cdn_sock))
        except BaseException as exc:  # noqa: BLE001 - reported by start(), not lost in a thread
            self._error = exc
        finally:
            api_sock.close()
            cdn_sock.close()
            self._ready.set()

    async def _serve(self, api_sock: socket.socket, cdn_sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        servers = [
            HttpServer(SimApp(self._state, origin="api"), api_sock),
            HttpServer(SimApp(self._state, origin="cdn"), cdn_sock),
        ]
        try:
            for server in servers:
                await server.start()
            self._ready.set()
            await self._stop_event.wait()
        finally:
            for server in servers:
                await server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Starting binds two sockets and starts a thread: milliseconds, fine to block.
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.running else "stopped"
        return f"<Simulator {where}>"

    # -- addresses ---------------------------------------------------------------

    def _origin(self, which: int) -> str:
        if self._bound is None:
            raise RuntimeError("the simulator is not running: use start() or a with block")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound[which]}"

    @property
    def api_origin(self) -> str:
        """``http://host:port`` of the API (the admin API is at ``/_sim/`` there)."""
        return self._origin(0)

    @property
    def base_url(self) -> str:
        """The API base URL, ``http://127.0.0.1:<port>/api/v1``."""
        return self.api_origin + API_PREFIX

    @property
    def cdn_base_url(self) -> str:
        """The origin that serves images, ``http://127.0.0.1:<other port>``."""
        return self._origin(1)

    @property
    def api_key(self) -> str:
        """The key of the account the simulator starts with."""
        return self._config.api_key

    @property
    def config(self) -> SimulatorConfig:
        """The settings this simulator was built with."""
        return self._config

    def client(self, **kwargs: Any) -> AsyncNanoBanana:
        """An `AsyncNanoBanana` for this simulator (the caller closes it).

        Args:
            **kwargs: Passed on to `AsyncNanoBanana` (``timeout``, ``max_retries``, ...).
        """
        from nanobanana import AsyncNanoBanana  # noqa: PLC0415 - the client is optional here

        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("base_url", self.base_url)
        if "http_client" not in kwargs:
            # The simulator is on loopback: never reach it through the environment's
            # proxy (HTTP_PROXY without a NO_PROXY for 127.0.0.1 would send it there).
            kwargs.setdefault("trust_env", False)
        return AsyncNanoBanana(**kwargs)

    def asgi_app(self, *, origin: str = "both") -> SimApp:
        """The simulator as an ASGI app, to run under another server (e.g. uvicorn).

        Faults that need the socket degrade there: a reset becomes a dropped request.
        """
        return SimApp(self._state, origin=origin)

    # -- accounts and settings ---------------------------------------------------

    def _account(self, api_key: str | None) -> Account:
        account = self._state.account(self.api_key if api_key is None else api_key)
        if account is None:
            raise KeyError("no account with that API key")
        return account

    def add_account(
        self,
        api_key: str,
        *,
        credits: int = 100,  # noqa: A002 - the documented option name
        api_access: bool = True,
        concurrency_limit: int = 1,
        pro: bool = False,
    ) -> None:
        """Add an account, or reset the settings and balance of an existing one."""
        self._state.add_account(
            api_key,
            credits=credits,
            api_access=api_access,
            concurrency_limit=concurrency_limit,
            pro=pro,
        )

    def credits(self, api_key: str | None = None) -> int:
        """An account's balance (default: the simulator's own account)."""
        with self._state.lock:
            return self._account(api_key).credits

    def in_flight(self, api_key: str | None = None) -> int:
        """How many requests of the account are in flight now."""
        with self._state.lock:
            return self._account(api_key).in_flight

    def max_in_flight(self, api_key: str | None = None) -> int:
        """The most requests of the account that were ever in flight at once."""
        with self._state.lock:
            return self._account(api_key).max_in_flight

    def peak_in_flight(self, api_key: str | None = None) -> int:
        """The most requests of the key the server saw in flight at once, refused ones included.

        `max_in_flight` counts the requests the server admitted, so it never passes the
        account's limit; this one counts every request it was handling, the ones it
        answered 429 too. Above ``concurrency_limit``, the clients using the key sent
        more at once than the account allows (also shown by ``GET /_sim/accounts``).
        """
        with self._state.lock:
            return self._account(api_key).peak_in_flight

    def set_generation_time(
        self,
        seconds: float | str | tuple[float, float] | GenerationTime,
        *,
        model: str | None = None,
    ) -> None:
        """Make generations (of ``model``, or of every model) take ``seconds``.

        ``seconds`` is a number, or a range each generation draws its time from:
        ``"0.5-2"`` or ``(0.5, 2)`` (uniform), ``"10-60@20"`` (peaking at 20 s).

        Example:
            >>> sim.set_generation_time("0.5-2")
        """
        self._state.set_generation_time(seconds, model=model)

    @property
    def clock(self) -> SimClock:
        """The simulated clock (image URL expiry, ``createdAt``); ``advance`` moves it."""
        return self._state.clock

    def reset(self) -> None:
        """Forget all state: accounts, ledger, requests, generations, faults, clock moves."""
        self._state.reset()

    # -- faults and holds --------------------------------------------------------

    def inject(self, kind: str | Fault, /, **options: Any) -> Fault:
        """Arm a scripted fault, and return it.

        ``kind`` is a `Fault`, a fault kind, or a preset name from ``FAULT_PRESETS``
        (``"429"``, ``"500_after_charge"``, ``"reset_after"``, ...); ``options`` are
        `Fault` fields. Kinds: ``status`` (``status=``, ``body=``, ``retry_after=``,
        ``html=``, ``after_charge=``), ``delay`` (``seconds=``), ``reset``
        (``after_charge=``), ``content_type`` (``content_type=``), ``sse_cut``
        (``after_events=``, ``with_id=``), ``sse_split`` (``chunk_sizes=``, ``pause=``),
        ``sse_junk`` / ``sse_heartbeats`` (``count=``), ``sse_oversize`` (``size=``),
        ``cdn_html``, ``cdn_huge`` (``size=``), ``cdn_redirect`` (``location=``),
        ``cdn_cut`` (``size=``: bytes sent before the cut; ``framing=``: ``"length"``,
        ``"chunked"`` or ``"close"``), ``cdn_stall`` (``size=``:
        bytes sent before the body stops, until the client leaves), and
        ``outcome`` (``outcome=``, ``generation_time=``, ``error_message=``,
        ``generation_id=``). Match with ``method=``, ``path=``, ``mode=``,
        ``origin=``; ``times=`` (default 1, ``None`` for every match).

        Example:
            >>> sim.inject("status", status=500, after_charge=True)
        """
        if isinstance(kind, Fault):
            fault = attrs.evolve(kind, **options)
        elif kind in PRESETS:
            fault = attrs.evolve(PRESETS[kind], **options)
        else:
            fault = Fault(kind=kind, **options)
        with self._state.lock:
            return self._state.faults.add(fault)

    def random_faults(
        self,
        *,
        rate: float = 0.3,
        seed: int | None = None,
        kinds: Iterable[str] = DEFAULT_RANDOM_KINDS,
    ) -> None:
        """Hit each request with probability ``rate`` by a preset drawn from ``kinds``.

        With a ``seed``, the same sequence of requests meets the same faults.
        """
        with self._state.lock:
            self._state.faults.set_random(rate=rate, seed=seed, kinds=tuple(kinds))

    def clear_faults(self) -> None:
        """Disarm every scripted and random fault."""
        with self._state.lock:
            self._state.faults.clear()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The armed faults, with how many hits each has left."""
        with self._state.lock:
            return self._state.faults.armed()

    def hold(self) -> Hold:
        """Keep generations accepted from now on processing until the hold is released.

        Example:
            >>> with sim.hold():
            ...     ...  # a sync request sent here stays in flight until the block ends
        """
        return self._state.hold()

    def release_holds(self) -> None:
        """Release every hold."""
        self._state.release_holds()

    # -- inspection --------------------------------------------------------------

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """The request log (API and CDN; the admin API is not logged), oldest first."""
        with self._state.lock:
            return tuple(self._state.requests)

    @property
    def ledger(self) -> tuple[LedgerEntry, ...]:
        """Every charge and refund, oldest first."""
        with self._state.lock:
            return tuple(self._state.ledger)

    @property
    def generations(self) -> tuple[GenerationRecord, ...]:
        """Snapshots of every generation, oldest first."""
        with self._state.lock:
            return tuple(g.snapshot() for g in self._state.generations.values())

    def generation(self, generation_id: str) -> GenerationRecord:
        """A snapshot of one generation.

        Raises:
            KeyError: If there is no such generation.
        """
        with self._state.lock:
            return self._state.generations[generation_id].snapshot()

    def wait_for(self, predicate: Callable[[], object], *, timeout: float = 5.0) -> None:
        """Block until ``predicate()`` is true, e.g. ``lambda: sim.in_flight() == 1``.

        Raises:
            TimeoutError: If it is still false after ``timeout`` seconds.
        """
        if not self._state.wait_for(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout} s")

    async def wait_for_async(
        self, predicate: Callable[[], object], *, timeout: float = 5.0
    ) -> None:
        """`wait_for` for asyncio and trio code: checks without blocking the event loop.

        Raises:
            TimeoutError: If it is still false after ``timeout`` seconds.
        """
        import anyio  # noqa: PLC0415 - anyio costs import time; only waiting needs it

        with anyio.move_on_after(timeout):
            while True:
                with self._state.lock:
                    if predicate():
                        return
                await anyio.sleep(_POLL)
        raise TimeoutError(f"condition not met within {timeout} s")
