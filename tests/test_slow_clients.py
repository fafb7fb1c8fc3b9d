"""Hostile clients with a valid authorize-only key must not stop /authorize for everyone else
(issue 10, item 9): bodies that trickle in at 1 byte/s and atLeastRevision far ahead of the
store. A real server with 2 workers, each WSGI server; bounded loops throughout.

gunicorn frees a slow body's thread at the deadline, so 2 x 4 threads outlast 16 slow bodies.
granian cannot (its body read has no timeout, granian#728): the client gets its 408 at the
deadline, but a client that stays keeps its thread. So granian runs at the default --threads 4:
the thread bank (sidecar/threadbank.py) must keep /authorize answered past more slow bodies than
threads, and cost nothing while none stalls.
"""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_API_KEY, Server

BODY_TIMEOUT_S = 1.0
SLOW_BODIES = 16  # more than gunicorn's 2 x 4 threads
THREADS = {"granian": "4", "gunicorn": "4"}  # the default
FAR_WAITERS = 8
BODY = b'{"uid": "alice", "action": "sendMessage", "target": "bob"}'


@pytest.fixture(params=["granian", "gunicorn"])
def busy_server(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    server = Server(tmp_path / "data", workers=2, extra_env={
        "CHATAUTHZ_SERVER": request.param, "CHATAUTHZ_THREADS": THREADS[request.param],
        "CHATAUTHZ_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "CHATAUTHZ_REVISION_WAIT_S": "2.0"}).start()
    server.name = request.param
    yield server
    server.stop()


def open_slow_body(port: int) -> socket.socket:
    """Headers for a complete /authorize, then only the first byte of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    head = (f"POST /authorize HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: {TEST_API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()
    sock.sendall(head + BODY[:1])
    return sock


def trickle(socks: list[socket.socket], opened: list[float], seconds: float) -> dict[int, tuple[float, bytes]]:
    """One more body byte per connection every 0.5 s until it answers; for each connection,
    how long after it was opened (`opened`, its monotonic time: the server's body clock starts
    no earlier) it first answered (data, or closed), and all it sent before closing or `seconds` end."""
    started, sent = time.monotonic(), 1
    first: dict[int, float] = {}
    data = {i: b"" for i in range(len(socks))}
    closed: set[int] = set()
    while time.monotonic() - started < seconds and len(closed) < len(socks):
        sent += 1
        for i, sock in enumerate(socks):
            if i not in first and sent < len(BODY):
                try:
                    sock.sendall(BODY[sent - 1:sent])
                except OSError:
                    first.setdefault(i, time.monotonic() - opened[i])
                    closed.add(i)
        readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], 0.5)
        for sock in readable:
            i = socks.index(sock)
            first.setdefault(i, time.monotonic() - opened[i])
            try:
                chunk = sock.recv(4096)
            except OSError:
                chunk = b""
            data[i] += chunk
            if not chunk:
                closed.add(i)
    return {i: (at, data[i]) for i, at in first.items()}


def far_ahead(server: Server, out: list[tuple[float, int, str]]) -> None:
    started = time.monotonic()
    try:
        response = requests.post(server.url + "/authorize", timeout=10, headers={"apikey": TEST_API_KEY},
                                 json={"uid": "alice", "action": "sendMessage", "atLeastRevision": 10**9})
        out.append((time.monotonic() - started, response.status_code, response.json()["error"]["code"]))
    except requests.RequestException as exc:
        out.append((time.monotonic() - started, 0, repr(exc)))


def test_slow_bodies_and_far_revisions_do_not_stop_authorize(busy_server: Server) -> None:
    slow, opened = [], []  # when each was opened: the clock of its body starts no earlier
    for _ in range(SLOW_BODIES):  # (timed from the trickle's start, a slow machine's thread starts
        opened.append(time.monotonic())  # made a 408 look early: 0.63 s for a 1 s timeout)
        slow.append(open_slow_body(busy_server.port))
    waits: list[tuple[float, int, str]] = []
    waiters = [threading.Thread(target=far_ahead, args=(busy_server, waits)) for _ in range(FAR_WAITERS)]
    try:
        for waiter in waiters:
            waiter.start()
        answers: dict[int, tuple[float, bytes]] = {}
        trickler = threading.Thread(target=lambda: answers.update(trickle(slow, opened, BODY_TIMEOUT_S + 5)))
        trickler.start()
        time.sleep(0.3)  # the hostile requests now hold whatever they can
        started, latencies = time.monotonic(), []
        for _ in range(20):  # the legitimate client: all answered, none waits behind them
            t0 = time.monotonic()
            decision = busy_server.authorize("alice", "sendMessage", target="bob")
            latencies.append(time.monotonic() - t0)
            assert decision["allowed"] is True
        assert time.monotonic() - started < 5.0, f"legit latencies {latencies}"
        trickler.join(timeout=15)
        for waiter in waiters:
            waiter.join(timeout=15)
    finally:
        for sock in slow:
            sock.close()
    # a body still incomplete after the deadline: 408, or the connection closed, soon after it
    # (gthread starts a request's clock when one of its 4 threads takes it: 16 bodies queue)
    assert len(answers) == SLOW_BODIES, f"{SLOW_BODIES - len(answers)} slow bodies got no answer"
    latest = BODY_TIMEOUT_S + (1.0 if busy_server.name == "granian" else 4.0)
    for at, data in answers.values():
        assert BODY_TIMEOUT_S - 0.2 <= at <= latest, sorted(round(a, 2) for a, _ in answers.values())
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
        if data:
            assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "ERR_BODY_TIMEOUT"
    # a revision the store never committed is refused at once, not after revision_wait_s
    # (under gthread, once a thread is free to take it)
    assert len(waits) == FAR_WAITERS
    for took, status, code in waits:
        assert (status, code) == (503, "ERR_REVISION_NOT_REACHED"), waits
        assert took < (1.0 if busy_server.name == "granian" else latest), waits


def test_revision_waits_are_few_and_only_for_an_unreadable_store(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: a committed revision is reached at once, one never committed is refused at
    once, and while the store cannot be read only `revision_waiters` (default 2) wait at a time."""
    from sidecar.core import Sidecar
    from sidecar.errors import StoreError
    from sidecar.policy import load_policy
    from sidecar.stores.sqlite import SQLiteStore

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    store = SQLiteStore(tmp_path / "state.db")
    core = Sidecar(policy, store, revision_wait_s=0.6)
    writer = Sidecar(policy, SQLiteStore(tmp_path / "state.db"))  # another worker, same file
    revision = writer.write(lambda tx: ([{"op": "put_role", "role": "temp", "record": {"role": "temp", "name": "Temp", "createdAt": 6}}], None), "t").revision
    started = time.monotonic()
    assert core.wait_for_revision(revision) is True
    assert core.wait_for_revision(revision + 10**6) is False
    assert time.monotonic() - started < 0.3

    def unreadable() -> None:
        raise StoreError("the store is locked")
    monkeypatch.setattr(core, "catch_up", unreadable)
    monkeypatch.setattr(store, "changed", lambda revision: True)
    took: dict[str, float] = {}

    def wait(name: str) -> None:
        t0 = time.monotonic()
        assert core.wait_for_revision(revision + 1) is False
        took[name] = time.monotonic() - t0
    waiting = [threading.Thread(target=wait, args=(name,)) for name in ("first", "second")]
    for thread in waiting:
        thread.start()
    time.sleep(0.1)
    wait("third")  # both waiter slots are taken: refused at once
    for thread in waiting:
        thread.join(timeout=5)
    assert took["third"] < 0.1 and 0.5 <= min(took["first"], took["second"]) < 2.0, took
    store.close()


def test_more_slow_bodies_than_threads_do_not_stop_authorize_on_granian(tmp_path: Path) -> None:
    """The class: N > every thread of every worker bodies stall at once (and stay open past the
    legitimate client's checks), through a real granian server at its defaults. Each check of
    the legitimate client is answered within a second, and the whole run within bounded time."""
    server = Server(tmp_path / "data", workers=2, extra_env={"CHATAUTHZ_SERVER": "granian",
                                                             "CHATAUTHZ_BODY_TIMEOUT_S": "5.0"}).start()
    stalled = 3 * 2 * 4  # 3 x (2 workers x 4 threads)
    slow: list[socket.socket] = []
    try:
        assert server.authorize("alice", "sendMessage", target="bob")["allowed"] is True  # warm
        slow = [open_slow_body(server.port) for _ in range(stalled)]
        time.sleep(0.5)  # they hold whatever they can; the bank notices within 2 x 50 ms
        started, latencies = time.monotonic(), []
        session = requests.Session()
        for i in range(40):
            t0 = time.monotonic()
            response = session.post(server.url + "/authorize", timeout=3, headers={"apikey": TEST_API_KEY},
                                    json={"uid": "alice", "action": "sendMessage", "target": "bob"})
            latencies.append(round(time.monotonic() - t0, 3))
            assert response.status_code == 200 and response.json()["data"]["allowed"] is True, response.text
            if i % 10 == 9:  # now and then a fresh connection too (it may land on either worker)
                session.close()
                session = requests.Session()
        session.close()
        assert max(latencies) < 1.0 and time.monotonic() - started < 4.0, latencies
        for sock in slow:  # none has been answered: their bodies are still due
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            sock.close()
        server.stop()


def test_thread_bank_parks_spare_threads_and_frees_them_for_stalls() -> None:
    """In-process, with a pool of 4 threads that take requests as granian's do: beyond `threads`
    threads out in the pool, one parks after its request (not after one whose body is left
    unread), and requests under way past stall_s send parked ones back."""
    import queue

    from sidecar.threadbank import ThreadBank, body_read

    bank = ThreadBank(threads=2, stall_s=0.2, idle_timeout_s=60)
    hold, tasks = threading.Event(), queue.SimpleQueue[Any]()

    def runner(proto: Any, scope: dict[str, Any]) -> Any:
        if scope.get("hold"):
            hold.wait(10)
        if scope.get("read"):
            body_read()
        return 200
    run = bank.wrap(runner)

    def worker() -> None:
        while (scope := tasks.get()) is not None:
            run(None, scope)

    def wait_for(**want: int) -> None:
        deadline = time.monotonic() + 5
        while any(bank.counts()[k] != v for k, v in want.items()):
            assert time.monotonic() < deadline, (want, bank.counts())
            time.sleep(0.01)
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for thread in pool:
        thread.start()
    try:
        for _ in range(4):  # each thread takes one (they hold until all four are in)
            tasks.put({"hold": True})
        wait_for(working=4)
        hold.set()
        wait_for(working=0, out=4)  # the bank has looked: 4 out, 2 more than `threads`
        hold.clear()
        tasks.put({"CONTENT_LENGTH": "5"})
        time.sleep(0.3)
        assert bank.counts()["parked"] == 0  # its body unread: it does not park
        for _ in range(2):
            tasks.put({"CONTENT_LENGTH": "5", "read": True})
        wait_for(parked=2, out=2)  # two park: `threads` stay out
        for _ in range(2):
            tasks.put({"hold": True})
        wait_for(working=2, stalled=2, parked=0)  # both out ones stall: the parked go back
        hold.set()
        wait_for(working=0)
    finally:
        hold.set()
        bank.stop()
        for _ in pool:
            tasks.put(None)
        for thread in pool:
            thread.join(timeout=2)
