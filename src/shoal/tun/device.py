"""The TUN/TAP file descriptor: open /dev/net/tun with fcntl.ioctl, batched non-blocking I/O.

TUN mode (IFF_TUN|IFF_NO_PI) carries bare IP packets. With ``offload=True`` the device is
opened with IFF_VNET_HDR, so it accepts GRO-like superpackets from us (one write and one trip
through the receiving TCP stack instead of ~45). With ``tso=True`` as well it is told
(TUNSETOFFLOAD) that we take partial checksums and TCP segmentation (TSO4/TSO6, plus
USO4/USO6 when the kernel knows them): the kernel's TCP stack then hands us 64 KiB
superpackets (one read instead of ~45) that we must split and checksum in Python. The virtio_net_hdr format and the split/coalesce rules are in
``shoal.tun.offload``; callers only ever see plain, MTU-sized IP packets with full checksums.

TAP mode (IFF_TAP|IFF_NO_PI) carries Ethernet frames. With ``offload=True`` it too gets the
vnet header (TSO is never enabled on a TAP, so reads are one frame each): ``write_ip_frames``
coalesces the IP packets of a batch into GRO-like superpackets, each behind the Ethernet
header the caller gives (``shoal.tun.offload.coalesce_frames``), and ``write_batch`` writes
whole frames as they are.

ioctl numbers (linux/if_tun.h, _IOW('T', n, int)): TUNSETIFF 202, TUNSETOFFLOAD 208,
TUNSETVNETHDRSZ 216; struct ifreq is 16 bytes of name + 2 bytes of flags, padded to 40.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from collections.abc import Callable

from shoal.tun.offload import VNET_HDR_LEN, VNET_NONE, coalesce, coalesce_frames, split, strip_frame

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
SIOCGIFMTU = 0x8921

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

IFNAMSIZ = 16
READ_SIZE = 65535 + VNET_HDR_LEN


class TunError(OSError):
    """Opening or configuring the TUN/TAP device failed (message says which step)."""


class Tun:
    """A non-blocking TUN (or TAP) device. Attributes: ``name``, ``mtu``, ``offload``, ``tap``,
    ``offload_flags`` (TUN_F_* accepted by the kernel) and counters in ``stats``."""

    def __init__(self, fd: int, name: str, *, tap: bool, offload: bool, offload_flags: int) -> None:
        self._fd = fd
        # A socket made in the namespace the device lives in, for interface ioctls (MTU) even
        # after the caller has moved to another namespace.
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.name = name
        self.tap = tap
        self.offload = offload
        self.offload_flags = offload_flags
        self.stats: dict[str, int] = {
            "rx_reads": 0,
            "rx_packets": 0,
            "rx_superpackets": 0,
            "rx_dropped": 0,
            "tx_writes": 0,
            "tx_packets": 0,
            "tx_superpackets": 0,
            "tx_errors": 0,
        }

    @classmethod
    def open(cls, name: str, *, tap: bool = False, offload: bool = True, tso: bool = False) -> "Tun":
        """Create (or attach to) interface ``name``. A TAP never gets TSO (``tso`` is ignored).

        ``offload`` turns on the vnet header, so writes are coalesced into GRO-like
        superpackets. ``tso`` (with ``offload``) also lets the kernel hand us checksum-partial
        TSO superpackets, which we split and checksum in Python; with ``tso=False`` the
        kernel segments and checksums in C and reads stay one packet each. Measured in the
        lab bench (BENCHMARKS.md notes): ``tso=False`` is faster (Python splitting costs
        ~4.7 us per segment, more than the read syscalls it saves), hence the default.
        """
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name must be 1..{IFNAMSIZ - 1} bytes: {name!r}")
        if tap:
            tso = False
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(e.errno, f"cannot open /dev/net/tun: {e.strerror}") from None
        flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        accepted = 0
        try:
            ifr = struct.pack("16sH22x", name.encode(), flags)
            try:
                res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as e:
                raise TunError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from None
            real = res[:IFNAMSIZ].rstrip(b"\0").decode()
            if offload:
                try:
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                except OSError as e:
                    raise TunError(e.errno, f"TUNSETVNETHDRSZ {real}: {e.strerror}") from None
                base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
                wants = (base | TUN_F_USO4 | TUN_F_USO6, base) if tso else (0,)
                for want in wants:
                    try:
                        fcntl.ioctl(fd, TUNSETOFFLOAD, want)
                    except OSError:
                        continue
                    accepted = want
                    break
                else:
                    raise TunError(errno.EINVAL, f"TUNSETOFFLOAD {real}: kernel refused TSO")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, real, tap=tap, offload=offload, offload_flags=accepted)

    @property
    def mtu(self) -> int:
        """The interface MTU as the kernel has it now."""
        ifr = struct.pack("16si20x", self.name.encode(), 0)
        res = fcntl.ioctl(self._ctl.fileno(), SIOCGIFMTU, ifr)
        return int(struct.unpack_from("i", res, IFNAMSIZ)[0])

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        """Up to about ``max_packets`` IP packets (or frames), [] when nothing is pending.

        A superpacket is always split whole, so the list may exceed ``max_packets`` by one
        superpacket's segments.
        """
        out: list[bytes] = []
        fd = self._fd
        read = os.read
        stats = self.stats
        reads = 0
        offload = self.offload
        while len(out) < max_packets:
            try:
                buf = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                stats["rx_dropped"] += 1
                break
            reads += 1
            if not offload:
                out.append(buf)
                continue
            if self.tap:
                frame = strip_frame(buf)
                if frame is None:
                    stats["rx_dropped"] += 1
                else:
                    out.append(frame)
                continue
            got = split(buf, out)
            if got == 0:
                stats["rx_dropped"] += 1
            elif got > 1 or buf[1]:
                stats["rx_superpackets"] += 1
        stats["rx_reads"] += reads
        stats["rx_packets"] += len(out)
        return out

    def write_batch(self, packets: list[bytes]) -> None:
        """Write IP packets (frames in TAP mode); TCP runs are coalesced when offloading.

        Errors (full queue, interface down, malformed packet) are counted, never raised.
        """
        if not packets:
            return
        if self.offload:
            bufs = [VNET_NONE + f for f in packets] if self.tap else coalesce(packets)
        else:
            bufs = packets
        self._write(bufs, len(packets))

    def write_ip_frames(self, packets: list[bytes], header_for: Callable[[bytes], bytes]) -> None:
        """TAP: write IP packets as frames behind ``header_for(packet)`` (14 bytes), TCP runs
        coalesced when offloading. Errors are counted, never raised."""
        if not packets:
            return
        if self.offload:
            bufs = coalesce_frames(packets, header_for)
        else:
            bufs = [header_for(p) + p for p in packets]
        self._write(bufs, len(packets))

    def _write(self, bufs: list[bytes], npackets: int) -> None:
        stats = self.stats
        fd = self._fd
        write = os.write
        errors = 0
        for b in bufs:
            try:
                write(fd, b)
            except OSError:
                errors += 1
        stats["tx_writes"] += len(bufs)
        stats["tx_packets"] += npackets
        if len(bufs) < npackets:  # only when offloading: some runs were coalesced
            stats["tx_superpackets"] += sum(1 for b in bufs if b[1])
        stats["tx_errors"] += errors

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._ctl.close()

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Tun", "TunError"]
