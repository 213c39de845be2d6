"""Work whose caller has gone is stopped (clip_service/process/disconnect.py), and siblings
of a failed step are cancelled (clip_service/concurrency.py): ASGI messages and tasks, no
server. The served tier checks the same through real sockets and the encoder's counters
(tests/test_served_cancellation.py)."""

from __future__ import annotations

import asyncio

import pytest

from clip_service.concurrency import gather_or_cancel
from clip_service.process.disconnect import CLIENT_CLOSED, CancelOnDisconnect
from clip_service.process.drain import GracefulShutdown

SCOPE = {"type": "http", "method": "POST", "path": "/interrogate"}


class Connection:
    """uvicorn's side of one request: its body, then a disconnect when the client goes."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.sent: list[dict] = []
        self._body_sent = False

    async def receive(self) -> dict:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def test_a_client_that_disconnects_cancels_the_work() -> None:
    async def main() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def app(scope, receive, send) -> None:
            await receive()  # the body
            started.set()
            try:
                await asyncio.sleep(60)  # a long interrogation
            except asyncio.CancelledError:
                cancelled.set()
                raise

        connection = Connection()
        serving = asyncio.create_task(
            CancelOnDisconnect(app)(SCOPE, connection.receive, connection.send)
        )
        await started.wait()
        connection.gone.set()
        await asyncio.wait_for(serving, 5)  # returns: the request is over
        assert cancelled.is_set()
        # With headers: BentoML's access log reads them from every response start.
        assert connection.sent[0] == {
            "type": "http.response.start",
            "status": CLIENT_CLOSED,
            "headers": [],
        }

    asyncio.run(main())


def test_a_finished_answer_is_not_a_disconnect() -> None:
    async def main() -> None:
        async def app(scope, receive, send) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        connection = Connection()
        middleware = CancelOnDisconnect(app)
        await middleware(SCOPE, connection.receive, connection.send)
        assert [m.get("status") for m in connection.sent] == [200, None]

    asyncio.run(main())


def test_an_app_asking_after_its_body_learns_of_the_disconnect() -> None:
    async def main() -> None:
        seen = []

        async def app(scope, receive, send) -> None:
            await receive()
            seen.append((await receive())["type"])  # e.g. Starlette's is_disconnected()

        connection = Connection()
        serving = asyncio.create_task(
            CancelOnDisconnect(app)(SCOPE, connection.receive, connection.send)
        )
        await asyncio.sleep(0)
        connection.gone.set()
        await asyncio.wait_for(serving, 5)
        assert seen in ([], ["http.disconnect"])  # cancelled first, or told

    asyncio.run(main())


def test_a_failed_step_cancels_its_siblings_and_is_raised_as_it_is() -> None:
    async def main() -> None:
        cancelled = asyncio.Event()

        async def long() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def refused() -> None:
            await asyncio.sleep(0)
            raise ValueError("label_tables: no custom label table 'nope'")

        with pytest.raises(ValueError, match="nope"):
            await gather_or_cancel(long(), refused())
        assert cancelled.is_set()
        assert await gather_or_cancel(asyncio.sleep(0, "a"), asyncio.sleep(0, "b")) == ["a", "b"]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("path", "counted"), [("/readyz", False), ("/metrics", False), ("/encode_texts", True)]
)
def test_probes_are_not_traffic_for_the_drain(path, counted) -> None:
    async def main() -> None:
        seen = []

        async def app(scope, receive, send) -> None:
            seen.append(shutdown.drain.in_flight)

        shutdown = GracefulShutdown(app, quiet_s=5, max_drain_s=60)
        shutdown.drain.last_done = 0.0
        await shutdown({"type": "http", "path": path}, None, None)
        assert seen == [1 if counted else 0]
        assert (shutdown.drain.last_done != 0.0) is counted

    asyncio.run(main())
