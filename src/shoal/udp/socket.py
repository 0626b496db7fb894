"""The one UDP data socket: dual-stack, non-blocking, batched with UDP GRO (receive) and
UDP GSO (send), never connect()ed, never raising for network errors.

Endpoints are ``(ip_str, port)``; IPv4 peers, which the AF_INET6 socket sees as v4-mapped
``::ffff:a.b.c.d``, are normalised to plain ``"a.b.c.d"`` (and mapped back when sending).

Kernel interfaces used (linux/udp.h):
- ``UDP_GRO`` (104) setsockopt 1: the kernel may merge several datagrams of one sender into
  one read; ``recvmsg`` then carries a ``(SOL_UDP, UDP_GRO, int gso_size)`` control message and
  the data is a run of datagrams of ``gso_size`` bytes (the last may be shorter).
- ``UDP_SEGMENT`` (103) as a ``sendmsg`` control message ``(SOL_UDP, UDP_SEGMENT, u16 size)``:
  one call sends a run of datagrams of ``size`` bytes (last may be shorter) to one address; at
  most ``GSO_MAX_SEGMENTS`` segments and ``GSO_MAX_BYTES`` bytes per call. If the kernel or the
  route refuses (EIO/EINVAL/EOPNOTSUPP), GSO is switched off for the socket and the run is sent
  datagram by datagram (EINVAL, e.g. a segment above the path MTU: this run only).
"""

from __future__ import annotations

import errno
import socket
import struct

from shoal.endpoint import Endpoint


SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # payload bytes per GSO send (IPv4 total length must stay < 65536)
RECV_BUF = 65535
SOCKET_BUFFER = 8 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_GSO_UNSUPPORTED_ERRNOS = {errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT}
_INT = struct.Struct("i")
_U16 = struct.Struct("H")


class UdpSocket:
    """Dual-stack batched UDP socket. ``stats`` counts datagrams, calls and dropped/failed sends."""

    def __init__(self, port: int = 0, *, host: str = "::", gro: bool = True, gso: bool = True) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                except OSError:  # not root: capped by net.core.[rw]mem_max
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.gro = False
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self.gso = gso
        self._buf = bytearray(RECV_BUF)
        self._view = memoryview(self._buf)
        self._from: dict[tuple, Endpoint] = {}  # raw sockaddr -> normalised endpoint
        self._to: dict[Endpoint, tuple[str, int]] = {}  # endpoint -> AF_INET6 sockaddr
        self.stats: dict[str, int] = {
            "rx_calls": 0,
            "rx_datagrams": 0,
            "rx_errors": 0,
            "tx_calls": 0,
            "tx_datagrams": 0,
            "tx_gso_calls": 0,
            "tx_dropped": 0,  # EAGAIN/ENOBUFS: socket buffer full
            "tx_errors": 0,  # other errors (unreachable, refused, bad address ...)
        }

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- receive ---------------------------------------------------------------------------

    def _endpoint(self, addr: tuple) -> Endpoint:
        ep = self._from.get(addr)
        if ep is None:
            host = addr[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            ep = (host, addr[1])
            if len(self._from) > 4096:
                self._from.clear()
            self._from[addr] = ep
        return ep

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Endpoint]]:
        """Up to about ``max_datagrams`` datagrams; [] when nothing is pending (non-blocking).

        A GRO run is always returned whole, so the list may exceed the limit by one run.
        """
        out: list[tuple[bytes, Endpoint]] = []
        sock = self._sock
        buf = self._buf
        view = self._view
        stats = self.stats
        calls = 0
        gro = self.gro
        while len(out) < max_datagrams:
            try:
                if gro:
                    n, anc, _flags, addr = sock.recvmsg_into([view], _GRO_CMSG_SPACE)
                else:
                    n, addr = sock.recvfrom_into(view)
                    anc = None
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # e.g. a queued ICMP error: count it, keep reading
                stats["rx_errors"] += 1
                continue
            calls += 1
            ep = self._endpoint(addr)
            size = 0
            if anc:
                for level, typ, data in anc:
                    if level == SOL_UDP and typ == UDP_GRO and len(data) >= 4:
                        size = _INT.unpack_from(data)[0]
            if 0 < size < n:
                for off in range(0, n, size):
                    out.append((bytes(buf[off : min(off + size, n)]), ep))
            else:
                out.append((bytes(buf[:n]), ep))
        stats["rx_calls"] += calls
        stats["rx_datagrams"] += len(out)
        return out

    # -- send ------------------------------------------------------------------------------

    def _sockaddr(self, ep: Endpoint) -> tuple[str, int]:
        sa = self._to.get(ep)
        if sa is None:
            host = ep[0]
            if ":" not in host:
                host = "::ffff:" + host
            sa = (host, ep[1])
            if len(self._to) > 4096:
                self._to.clear()
            self._to[ep] = sa
        return sa

    def _send_one(self, data: bytes, sa: tuple[str, int]) -> None:
        try:
            self._sock.sendto(data, sa)
            self.stats["tx_datagrams"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["tx_dropped"] += 1
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.stats["tx_dropped"] += 1
            else:
                self.stats["tx_errors"] += 1
        self.stats["tx_calls"] += 1

    def _send_run(self, run: list[bytes], size: int, sa: tuple[str, int]) -> None:
        stats = self.stats
        try:
            self._sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, sa)
            stats["tx_datagrams"] += len(run)
            stats["tx_gso_calls"] += 1
            stats["tx_calls"] += 1
            return
        except (BlockingIOError, InterruptedError):
            stats["tx_dropped"] += len(run)
            stats["tx_calls"] += 1
            return
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                stats["tx_dropped"] += len(run)
                stats["tx_calls"] += 1
                return
            if e.errno in _GSO_UNSUPPORTED_ERRNOS:
                self.gso = False  # no UDP GSO on this kernel/route: plain sends from now on
            elif e.errno != errno.EINVAL:  # EINVAL: this run only (e.g. segment > path MTU)
                stats["tx_errors"] += len(run)
                stats["tx_calls"] += 1
                return
        for d in run:
            self._send_one(d, sa)

    def send_batch(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        """Send in order; runs of equal-size datagrams to one endpoint go out as one GSO call."""
        if not self.gso:
            for data, ep in datagrams:
                self._send_one(data, self._sockaddr(ep))
            return
        i = 0
        n = len(datagrams)
        while i < n:
            data, ep = datagrams[i]
            size = len(data)
            run = [data]
            total = size
            j = i + 1
            while j < n and len(run) < GSO_MAX_SEGMENTS:
                d2, ep2 = datagrams[j]
                l2 = len(d2)
                if ep2 != ep or l2 > size or total + l2 > GSO_MAX_BYTES or l2 == 0:
                    break
                run.append(d2)
                total += l2
                j += 1
                if l2 < size:
                    break  # a shorter datagram ends a run
            if len(run) == 1:
                self._send_one(data, self._sockaddr(ep))
            else:
                self._send_run(run, size, self._sockaddr(ep))
            i = j

    def close(self) -> None:
        self._sock.close()


__all__ = ["UdpSocket", "Endpoint"]
