"""STAND-IN market data feed (replaced by the real module at merge): MoldUDP64 over UDP multicast, no
re-request server (a gap is counted as unrecovered)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from greekfire.market import moldudp
from greekfire.market.itch import to_bytes


class UdpMulticast:
    def __init__(self, group: str, port: int, iface: str = "127.0.0.1", timestamps: bool = True) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("", port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(iface))
        s.setblocking(False)
        self._s = s

    def recv(self, buf: memoryview) -> tuple[int, int]:
        try:
            n = self._s.recv_into(buf)
        except BlockingIOError:
            return 0, 0
        return n, time.time_ns()

    def fileno(self) -> int:
        return self._s.fileno()

    def close(self) -> None:
        self._s.close()


class FeedServer:
    def __init__(self, itch: bytes | Path, group: str, port: int, *, rate: float = 0, session: str = "GREEKFIRE",
                 rerequest_port: int = 0, drop: Iterable[int] = (), framing: str = "length") -> None:
        data = to_bytes(itch).tobytes()
        self._packets = moldudp.packetize(data, session)
        self._group, self._port, self.rate = group, port, float(rate)
        self._drop = set(drop)
        self.sent = 0
        self.rerequest_address = ("127.0.0.1", rerequest_port)
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def start(self) -> None:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        t0 = time.perf_counter()
        msgs = 0
        for i, p in enumerate(self._packets):
            if self._stop.is_set():
                break
            count = int.from_bytes(p[18:20], "big")
            if count != moldudp.END_OF_SESSION:
                msgs += count
            if self.rate > 0:
                due = t0 + msgs / self.rate
                while time.perf_counter() < due:
                    pass
            if i not in self._drop:
                s.sendto(p, (self._group, self._port))
            self.sent += 1
        for _ in range(3):
            s.sendto(self._packets[-1], (self._group, self._port))
        s.close()

    def stop(self) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(5)


class FeedHandler:
    def __init__(self, transport: UdpMulticast, rerequest: tuple[str, int] | None, session: str | None = None) -> None:
        self._t = transport
        self._rx = moldudp.MoldReceiver()
        self._buf = bytearray(65536)
        self.stats: dict = {"packets": 0, "messages": 0, "gaps": 0, "recovered": 0, "unrecovered": 0,
                            "duplicates": 0, "drops": 0}

    @property
    def ended(self) -> bool:
        return self._rx.ended

    def poll(self, timeout_s: float = 0.0) -> tuple[list[bytes], list[int]]:
        end = time.monotonic() + timeout_s
        mv = memoryview(self._buf)
        msgs: list[bytes] = []
        tss: list[int] = []
        while True:
            n, ts = self._t.recv(mv)
            if n:
                self.stats["packets"] += 1
                got = self._rx.feed(bytes(mv[:n]))
                if got:
                    data = self._rx.drain()
                    pos = 0
                    while pos < len(data):
                        ln = int.from_bytes(data[pos : pos + 2], "big")
                        msgs.append(data[pos + 2 : pos + 2 + ln])
                        tss.append(ts)
                        pos += 2 + ln
                continue
            if msgs or time.monotonic() >= end:
                break
        self.stats["messages"] += len(msgs)
        self.stats["gaps"] = len(self._rx.gaps)
        self.stats["unrecovered"] = self._rx.missing()
        self.stats["duplicates"] = self._rx.duplicates
        return msgs, tss

    def close(self) -> None:
        self._t.close()


def serve_feed(path: str | Path, group: str, port: int, rate: float, **kw: object) -> None:
    srv = FeedServer(Path(path), group, port, rate=rate)
    srv.start()
    assert srv._t is not None
    srv._t.join()
