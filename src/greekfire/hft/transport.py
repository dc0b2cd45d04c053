"""Feed transports: how MoldUDP64 packets come off the wire, with their receive timestamps.

:class:`Transport` is the interface (``recv``, ``fileno``, ``close``); :class:`UdpMulticast` is a kernel UDP
socket joined to the group, with kernel receive timestamps from ``SO_TIMESTAMPING`` (hardware ones where the
NIC stamps packets) and the socket's own drop counter from ``SO_RXQ_OVFL``; :class:`AfPacket` is a raw
``AF_PACKET`` socket that parses Ethernet/IPv4/UDP itself (needs CAP_NET_RAW). A kernel-bypass library plugs
in as a transport of its own (see the "Kernel bypass" section of docs/hft.md). Receive timestamps are
nanoseconds since the epoch (CLOCK_REALTIME).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import socket
import struct
import time
from typing import Any, Protocol, runtime_checkable

from greekfire.core.errors import DataError, UnavailableError

# socket options (linux/net_tstamp.h, asm-generic/socket.h, linux/if_packet.h, linux/sockios.h)
SO_TIMESTAMPING = 37
SO_RXQ_OVFL = 40
SO_RCVBUFFORCE = 33
SOF_TIMESTAMPING_RX_HARDWARE = 1 << 2
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 6
SIOCGIFADDR = 0x8915
SIOCETHTOOL = 0x8946
ETHTOOL_GET_TS_INFO = 0x41
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26

DEFAULT_RCVBUF = 32 << 20  # bytes asked for; the kernel caps it at net.core.rmem_max unless root
MAX_PAYLOAD = 1400  # MoldUDP64 payload bytes per packet: fits a 1500-byte Ethernet frame
ANC_SPACE = socket.CMSG_SPACE(48) + socket.CMSG_SPACE(4)


# ------------------------------------------------------------------------------------------- timestamps
def parse_ancillary(anc: list[tuple[int, int, bytes]]) -> tuple[int, bool, int]:
    """(timestamp ns or 0, hardware?, socket drop counter or -1) from recvmsg's ancillary data."""
    ts, hw, drops = 0, False, -1
    for level, kind, data in anc:
        if level != socket.SOL_SOCKET:
            continue
        if kind == SO_TIMESTAMPING and len(data) >= 48:
            s0, n0, _, _, s2, n2 = struct.unpack_from("6q", data)
            if s2 or n2:
                ts, hw = s2 * 1_000_000_000 + n2, True
            else:
                ts = s0 * 1_000_000_000 + n0
        elif kind == SO_RXQ_OVFL and len(data) >= 4:
            drops = struct.unpack_from("I", data)[0]
    return ts, hw, drops


def _enable_timestamps(sock: socket.socket) -> bool:
    flags = (SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_RX_HARDWARE
             | SOF_TIMESTAMPING_RAW_HARDWARE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
        return True
    except OSError:
        return False


def big_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer (past net.core.rmem_max where permitted); returns what the
    kernel granted (bytes, as the kernel reports it: twice the request)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def interface_name(iface: str) -> str | None:
    """The network interface (``lo``, ``eth0``) holding IPv4 address ``iface``; ``iface`` itself when it
    is already an interface name; None when no interface has it."""
    names = [n for _, n in socket.if_nameindex()]
    if iface in names:
        return iface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(res[20:24]) == iface:
                return name
    return None


def timestamp_caps(ifname: str) -> dict[str, Any]:
    """What interface ``ifname`` can stamp on receive (the ``ethtool -T`` query): ``software_rx``,
    ``hardware_rx`` (the NIC stamps packets: its clock is PTP hardware clock ``phc_index``)."""
    info = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GET_TS_INFO) + bytes(40))
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(info)).ljust(40, b"\0")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        return {"interface": ifname, "software_rx": False, "hardware_rx": False, "phc_index": -1,
                "error": f"{type(exc).__name__}: {exc}"}
    _, caps, phc = struct.unpack_from("IIi", info.raw)
    return {"interface": ifname, "software_rx": bool(caps & SOF_TIMESTAMPING_RX_SOFTWARE),
            "hardware_rx": bool(caps & SOF_TIMESTAMPING_RX_HARDWARE and caps & SOF_TIMESTAMPING_RAW_HARDWARE),
            "phc_index": int(phc)}


# ------------------------------------------------------------------------------------------- transports
@runtime_checkable
class Transport(Protocol):
    """Where a feed handler gets packets from: a kernel socket, a raw socket, or a kernel-bypass library.

    ``recv`` never blocks: it copies one packet (the UDP payload: a MoldUDP64 packet) into ``buf`` and
    returns (bytes, receive timestamp in ns since the epoch), or (0, 0) when none is waiting. ``fileno``
    is a descriptor that turns readable when a packet waits (-1: the handler busy-polls ``recv``). A
    transport may also expose ``drops`` (packets it or the kernel dropped, cumulative), which the handler
    reports.
    """

    def recv(self, buf: memoryview) -> tuple[int, int]: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def check_group(group: str, port: int) -> None:
    try:
        ok = ipaddress.ip_address(group).version == 4 and ipaddress.ip_address(group).is_multicast
    except ValueError:
        ok = False
    if not ok:
        raise DataError("group", group, "an IPv4 multicast address (224.0.0.0/4), e.g. 239.192.0.1")
    if not 1 <= port <= 65535:
        raise DataError("port", port, "a UDP port 1..65535")


class UdpMulticast:
    """A UDP socket joined to multicast ``group`` on the interface with address ``iface``, bound to
    ``port``, non-blocking, with a large receive buffer (``rcvbuf`` bytes asked; ``self.rcvbuf`` is what
    the kernel granted) and kernel receive timestamps when ``timestamps`` (hardware ones where the NIC
    stamps packets and its filter is on: ``hardware_packets`` counts them). ``drops``: packets the kernel
    dropped because this socket's buffer was full (``SO_RXQ_OVFL``; known when the next packet arrives)."""

    def __init__(self, group: str, port: int, iface: str = "127.0.0.1", timestamps: bool = True,
                 rcvbuf: int = DEFAULT_RCVBUF) -> None:
        check_group(group, port)
        self.group, self.port, self.iface = group, port, iface
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.rcvbuf = big_rcvbuf(sock, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self.timestamps = timestamps and _enable_timestamps(sock)
            sock.bind((group, port))  # bound to the group: datagrams to other groups on the port stay out
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + socket.inet_aton(iface))
        except OSError as exc:
            sock.close()
            raise UnavailableError(f"multicast {group}:{port} on {iface}",
                                   f"{exc.strerror or exc} (is {iface} the address of an interface with "
                                   "multicast on? `ip addr`, `ip link set IF multicast on`)") from exc
        sock.setblocking(False)
        self._sock = sock
        self.drops = 0
        self.truncated = 0
        self.hardware_packets = 0
        name = interface_name(iface)
        #: what the interface can stamp (``hardware_rx``: the NIC does; see docs/hft.md to turn it on)
        self.timestamp_caps = timestamp_caps(name) if name else {"interface": None, "software_rx": True,
                                                                  "hardware_rx": False, "phc_index": -1}

    def recv(self, buf: memoryview) -> tuple[int, int]:
        """One packet into ``buf``: (bytes, receive time ns); (0, 0) when none waits."""
        try:
            n, anc, flags, _ = self._sock.recvmsg_into([buf], ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return 0, 0
        ts, hw, drops = parse_ancillary(anc)
        if drops >= 0:
            self.drops = drops
        if hw:
            self.hardware_packets += 1
        if flags & socket.MSG_TRUNC:
            self.truncated += 1
        return n, ts or time.time_ns()

    def fileno(self) -> int:
        """The socket's descriptor (readable when a packet waits)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket (leaves the group)."""
        self._sock.close()


def _bpf_udp(group: str, port: int) -> bytes:
    """Classic BPF: IPv4, UDP, destination ``group``:``port``, first fragment only (Ethernet frames)."""
    g = struct.unpack(">I", socket.inet_aton(group))[0]
    prog = [
        (0x28, 0, 0, 12),         # ldh [12]            ethertype
        (0x15, 0, 10, ETH_P_IP),  # jeq IPv4 else drop
        (0x20, 0, 0, 30),         # ld [30]             destination address
        (0x15, 0, 8, g),          # jeq group else drop
        (0x30, 0, 0, 23),         # ldb [23]            protocol
        (0x15, 0, 6, 17),         # jeq UDP else drop
        (0x28, 0, 0, 20),         # ldh [20]            flags + fragment offset
        (0x45, 4, 0, 0x1FFF),     # jset offset: a later fragment: drop
        (0xB1, 0, 0, 14),         # ldxb 4*([14]&0xf)   IP header length
        (0x48, 0, 0, 16),         # ldh [x+16]          UDP destination port
        (0x15, 0, 1, port),       # jeq port else drop
        (0x06, 0, 0, 0x40000),    # ret accept
        (0x06, 0, 0, 0),          # ret drop
    ]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


class AfPacket:
    """Raw receive path: an ``AF_PACKET`` socket on interface ``iface`` (a name such as ``eth0``/``lo`` or
    an interface's IPv4 address) with a BPF filter for ``group``:``port``, parsing Ethernet, IPv4 and UDP
    headers itself (headers checked again in Python; packets that do not match are counted in
    ``filtered``). The group is joined through a UDP socket so the NIC and the switch deliver it.
    ``drops``: frames the kernel dropped for this socket (PACKET_STATISTICS). Needs CAP_NET_RAW."""

    def __init__(self, group: str, port: int, iface: str = "lo", timestamps: bool = True,
                 rcvbuf: int = DEFAULT_RCVBUF) -> None:
        check_group(group, port)
        name = interface_name(iface)
        if name is None:
            raise DataError("iface", iface, "an interface name or the IPv4 address of one (`ip addr`)")
        self.group, self.port, self.iface = group, port, name
        self._group = socket.inet_aton(group)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no frames until bound: filter first
        except PermissionError as exc:
            raise UnavailableError(
                "AF_PACKET raw socket",
                "needs CAP_NET_RAW: run as root, or `sudo setcap cap_net_raw+ep $(readlink -f $(which python))`; "
                "the UdpMulticast transport needs no privilege") from exc
        try:
            prog = ctypes.create_string_buffer(_bpf_udp(group, port))
            fprog = struct.pack("HL", len(prog.raw) // 8, ctypes.addressof(prog))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.rcvbuf = big_rcvbuf(sock, rcvbuf)
            self.timestamps = timestamps and _enable_timestamps(sock)
            sock.bind((name, ETH_P_IP))
        except OSError as exc:
            sock.close()
            raise UnavailableError(f"AF_PACKET on {name}", str(exc)) from exc
        # the membership makes the interface accept the group's frames (and the switch send them)
        self._join = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._join.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        self._join.bind((group, 0))
        addr = iface if name != iface else _first_address(name)
        self._join.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, self._group + socket.inet_aton(addr))
        sock.setblocking(False)
        self._sock = sock
        self._frame = bytearray(65600)
        self._fview = memoryview(self._frame)
        self.filtered = 0
        self.fragments = 0
        self.hardware_packets = 0
        self._drops = 0
        self.timestamp_caps = timestamp_caps(name)

    @property
    def drops(self) -> int:
        """Frames the kernel dropped for this socket so far (its buffer was full)."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            self._drops += struct.unpack("II", raw)[1]  # reading resets the kernel's counters
        except OSError:
            pass
        return self._drops

    def recv(self, buf: memoryview) -> tuple[int, int]:
        """The UDP payload of the next matching frame into ``buf``: (bytes, receive time ns); (0, 0) when none."""
        f = self._frame
        while True:
            try:
                n, anc, _, addr = self._sock.recvmsg_into([self._fview], ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return 0, 0
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue  # our own transmissions
            if n < 42 or f[12] != 0x08 or f[13] != 0x00 or f[14] >> 4 != 4 or f[23] != 17:
                self.filtered += 1
                continue
            ihl = (f[14] & 0x0F) * 4
            if f[30:34] != self._group or ((f[20] << 8) | f[21]) & 0x3FFF:
                if ((f[20] << 8) | f[21]) & 0x3FFF:
                    self.fragments += 1
                else:
                    self.filtered += 1
                continue
            u = 14 + ihl
            if n < u + 8 or ((f[u + 2] << 8) | f[u + 3]) != self.port:
                self.filtered += 1
                continue
            size = ((f[u + 4] << 8) | f[u + 5]) - 8
            if size < 0 or u + 8 + size > n:
                self.filtered += 1
                continue
            buf[:size] = self._fview[u + 8 : u + 8 + size]
            ts, hw, _ = parse_ancillary(anc)
            if hw:
                self.hardware_packets += 1
            return size, ts or time.time_ns()

    def fileno(self) -> int:
        """The socket's descriptor (readable when a packet waits)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket (leaves the group)."""
        self._sock.close()
        self._join.close()


def _first_address(ifname: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as exc:
            raise DataError("iface", ifname, "an interface with an IPv4 address (`ip addr`)") from exc
    return socket.inet_ntoa(res[20:24])
