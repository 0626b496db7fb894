"""Every wire and timer constant of Shoal's protocols, named as in their specs.

The one place these numbers live; engines import them from here. Sections: WireGuard
(whitepaper section 5-6, wireguard-go's names), STUN (RFC 5389/5780), LAN extensions
(docs/lan.md). Control-channel close codes live with their transport
(`shoal.control.transport`). Tests may shorten timers only by building a `Timers` value with
other numbers, never by editing these.
"""

from __future__ import annotations

import dataclasses

# --- Noise protocol identity (whitepaper 5.4) -------------------------------------------
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# --- Message types and sizes (whitepaper 5.4.2-5.4.7) -----------------------------------
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16
MESSAGE_TRANSPORT_MIN_SIZE = MESSAGE_TRANSPORT_HEADER_SIZE + 16  # header + empty payload tag

KEY_LEN = 32
TAG_LEN = 16
TIMESTAMP_LEN = 12
COOKIE_LEN = 16
MAC_LEN = 16
COOKIE_NONCE_LEN = 24
PADDING_MULTIPLE = 16

# --- Limits (whitepaper 6.1) -------------------------------------------------------------
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333  # wireguard-go: up to 333 ms of jitter per retry
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
COOKIE_SECRET_LATENCY = 5.0  # initiator stops using a cookie 5 s before the secret rotates (Linux)
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most one initiation per 20 ms per peer
NEW_PATH_HANDSHAKE_GAP = 0.1  # Shoal: a handshake on a new path waits this long after the last initiation
ZEROIZE_AFTER = REJECT_AFTER_TIME * 3  # 540 s: forget all key material

# --- TAI64N timestamps (whitepaper 5.4.2; wireguard-go tai64n/tai64n.go) -----------------
TAI64N_BASE = 0x400000000000000A  # 2**62 + 10: the TAI64 label of 1970-01-01 00:00:10 TAI
TAI64N_WHITENER_MASK = 0x1000000 - 1  # low 24 bits of the nanoseconds cleared (~16.8 ms)

# --- Replay window (RFC 6479, wireguard-go's sizes) -----------------------------------------
REPLAY_BLOCK_BITS = 64
REPLAY_RING_BLOCKS = 128  # 8192 bits of ring; window = (blocks - 1) * 64 = 8128
REPLAY_WINDOW_SIZE = (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS

# --- Handshake load (wireguard-go device/constants.go, ratelimiter) -----------------------
UNDER_LOAD_AFTER_TIME = 1.0  # stay under load for 1 s after the load was last seen
# Shoal's measure of load (wireguard-go counts its handshake queue instead; a Python engine
# handles each handshake inline, so we count handshake messages with a valid mac1 per second).
UNDER_LOAD_HANDSHAKES_PER_SECOND = 64
RATELIMIT_PACKETS_PER_SECOND = 20
RATELIMIT_BURST = 5
RATELIMIT_GC_INTERVAL = 1.0
RATELIMIT_MAX_ENTRIES = 65536  # Linux wireguard ratelimiter.c: max_entries = 8 * 8192 buckets

# --- Interface -----------------------------------------------------------------------------
DEFAULT_MTU = 1420
MAX_PEERS = 1 << 16

# The interface's latency keeper (shoal.dataplane.warm; why and what it costs: BENCHMARKS.md).
WARM_INTERVAL = 0.001  # while data flows, wake this often when no packet woke us
WARM_HOLD = 2.0  # keep warm this long after the last data packet; then no wake-ups at all


@dataclasses.dataclass(frozen=True, slots=True)
class Timers:
    """The timer constants an engine runs with; tests build shortened ones on the fake clock."""

    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    cookie_refresh_time: float = COOKIE_REFRESH_TIME
    zeroize_after: float = ZEROIZE_AFTER
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES


DEFAULT_TIMERS = Timers()


# --- STUN (RFC 5389 session traversal, RFC 5780 NAT behaviour discovery) -----------------
# Wire format: shoal.nat.stun's docstring.
STUN_PORT = 3478  # RFC 5389 section 18.4, the default port (the server's primary port)
STUN_ALT_PORT = 3479  # Shoal's default alternate port for RFC 5780 CHANGE-REQUEST "change port"
STUN_MAGIC_COOKIE = 0x2112A442
STUN_HEADER_SIZE = 20
STUN_TRANSACTION_ID_SIZE = 12
STUN_FINGERPRINT_XOR = 0x5354554E
STUN_MAX_MESSAGE_SIZE = 4096  # parser limit; RFC 5780 PADDING probes (turnutils_stunclient: 1532 bytes) exceed the MTU

STUN_METHOD_BINDING = 0x001
STUN_CLASS_REQUEST = 0b00
STUN_CLASS_INDICATION = 0b01
STUN_CLASS_SUCCESS = 0b10
STUN_CLASS_ERROR = 0b11

STUN_ATTR_MAPPED_ADDRESS = 0x0001
STUN_ATTR_CHANGE_REQUEST = 0x0003  # RFC 5780
STUN_ATTR_USERNAME = 0x0006
STUN_ATTR_MESSAGE_INTEGRITY = 0x0008
STUN_ATTR_ERROR_CODE = 0x0009
STUN_ATTR_UNKNOWN_ATTRIBUTES = 0x000A
STUN_ATTR_REALM = 0x0014
STUN_ATTR_NONCE = 0x0015
STUN_ATTR_XOR_MAPPED_ADDRESS = 0x0020
STUN_ATTR_PADDING = 0x0026  # RFC 5780
STUN_ATTR_RESPONSE_PORT = 0x0027  # RFC 5780
STUN_ATTR_SOFTWARE = 0x8022
STUN_ATTR_ALTERNATE_SERVER = 0x8023
STUN_ATTR_FINGERPRINT = 0x8028
STUN_ATTR_RESPONSE_ORIGIN = 0x802B  # RFC 5780
STUN_ATTR_OTHER_ADDRESS = 0x802C  # RFC 5780

STUN_CHANGE_IP = 0x04  # CHANGE-REQUEST flag A
STUN_CHANGE_PORT = 0x02  # CHANGE-REQUEST flag B

STUN_ERROR_BAD_REQUEST = 400
STUN_ERROR_UNKNOWN_ATTRIBUTE = 420

# --- issue 18 F14: STUN reflection limits (shoal.nat.responder) ----------------------------
# Token buckets per source: an IPv4 address (IPv6: its /64) and its prefix (IPv4 /24, IPv6 /48).
# A node sends a few Binding requests per refresh (every 4-20 s) and about ten per netcheck.
STUN_RATE_PER_ADDRESS = 20.0  # answers per second to one source address...
STUN_BURST_PER_ADDRESS = 50
STUN_RATE_PER_PREFIX = 200.0  # ...and to one source prefix
STUN_BURST_PER_PREFIX = 400
STUN_RATE_MAX_SOURCES = 16384  # buckets kept per level (full ones are forgotten first, then the oldest)
STUN_PREFIX_V4 = 24
STUN_PREFIX_V6 = 48

# Client retransmission (RFC 5389 section 7.2.1 uses RTO 500 ms, Rc 7, Rm 16: 39.5 s to
# give up; netcheck wants an answer within seconds, so fewer, faster tries).
STUN_RTO = 0.25  # first retransmission after this, doubling each time
STUN_MAX_TRANSMISSIONS = 4  # sends at 0, 0.25, 0.75, 1.75 s
STUN_FINAL_WAIT = 1.0  # after the last send, wait this long before giving up (2.75 s in all)


# --- Port mapping (issue #5 part 2): PCP (RFC 6887), NAT-PMP (RFC 6886), UPnP IGD ------------
# Wire formats: shoal.nat.portmap.natpmp, .pcp and .upnp; client: shoal.nat.portmap.client.
PCP_PORT = 5351  # RFC 6887 section 19.1: the PCP server's port (same as NAT-PMP's)
NATPMP_PORT = 5351  # RFC 6886 section 3.1
PCP_VERSION = 2
NATPMP_VERSION = 0
PCP_OPCODE_ANNOUNCE = 0
PCP_OPCODE_MAP = 1
PCP_NONCE_LEN = 12  # RFC 6887 section 11.1: the MAP nonce
PCP_MAX_SIZE = 1100  # RFC 6887 section 7: no PCP message is longer
NATPMP_OP_EXTERNAL = 0
NATPMP_OP_MAP_UDP = 1
NATPMP_OP_MAP_TCP = 2
NATPMP_RESPONSE_BIT = 0x80  # opcode of a response = request opcode + 128
IPPROTO_UDP = 17
SSDP_ADDR = "239.255.255.250"  # UPnP Device Architecture 1.1 section 1.3.2
SSDP_PORT = 1900
SSDP_MX = 1  # seconds a device may wait before answering an M-SEARCH
SSDP_MAX_SIZE = 2048  # bytes of an SSDP answer we read; longer ones are dropped
UPNP_MAX_DESCRIPTION = 65536  # bytes of a device description or SOAP answer we read
UPNP_HTTP_TIMEOUT = 1.0  # seconds for one HTTP exchange with the gateway
# Lifetimes (seconds). RFC 6886 section 3.3 recommends 7200 s; renew at half the granted
# lifetime (RFC 6887 section 11.2.1 allows renewing from half of it on).
PORTMAP_LIFETIME = 7200
PORTMAP_MIN_LIFETIME = 2  # a shorter granted lifetime is treated as this (renew every 1 s)
PORTMAP_RENEW_FRACTION = 0.5
# Client retransmission for PCP/NAT-PMP (RFC 6886 uses 250 ms doubling for 9 tries, ~64 s;
# shoal wants an answer or a clear no within about a second, so fewer tries)
PORTMAP_RTO = 0.25  # first retransmission after this, doubling each time
PORTMAP_MAX_TRANSMISSIONS = 3  # sends at 0, 0.25, 0.75 s...
PORTMAP_FINAL_WAIT = 0.5  # ...then wait this long after the last: no answer by 1.25 s = absent
PORTMAP_RETRY_INTERVAL = 60.0  # after a failed renewal, try again this often
PORTMAP_SSDP_WAIT = 1.2  # seconds to collect SSDP answers (SSDP_MX plus a margin)
PORTMAP_START_TIMEOUT = 2.5  # PortMapper.start() and probe() give up after this (seconds)
PORTMAP_CLOSE_TIMEOUT = 1.0  # close(): time given to the deletes before the sockets go

# --- LAN: broadcast, multicast and layer-2 networks (issue #6; design: docs/lan.md) --------
# Wire formats: shoal.lan.extension (the extension message carried
# inside WireGuard transport plaintext), shoal.lan.ethernet, shoal.lan.arp.

# Extension message header (shoal.lan.extension). The first plaintext byte's high nibble is
# the IP version of an ordinary transport payload (4 or 6); 5 marks a Shoal extension.
LAN_EXT_MARKER = 0x5  # high nibble of byte 0
LAN_EXT_VERSION = 1  # low nibble of byte 0
LAN_EXT_KIND_IP = 1  # payload: one IPv4/IPv6 packet to a broadcast or multicast address
LAN_EXT_KIND_FRAME = 2  # payload: one Ethernet frame (no preamble, no FCS) of a layer-2 network
LAN_EXT_MAX_NETWORK_ID = 16  # bytes; the control plane's NetworkId is [a-z0-9]{1,16}
LAN_EXT_MAX_HEADER = 4 + LAN_EXT_MAX_NETWORK_ID + 2  # 22
LAN_EXT_MAX_IP_PAYLOAD = 1500  # an IP packet carried as kind IP
LAN_EXT_MAX_FRAME = 1522  # 14-byte header + two 802.1Q tags + 1500 payload
LAN_EXT_MAX_PADDING = PADDING_MULTIPLE - 1  # zero bytes a WireGuard sender may append

# Interface MTUs (docs/lan.md "MTU"): an IP network's Ethernet-like interface keeps the
# WireGuard MTU for unicast; a layer-2 network's interface leaves room for a VLAN tag, the
# Ethernet header and the extension header inside DEFAULT_MTU.
LAN_L2_MTU = DEFAULT_MTU - 14 - 4 - LAN_EXT_MAX_HEADER  # 1380
LAN_BCAST_ROUTE_MTU = DEFAULT_MTU - LAN_EXT_MAX_HEADER  # 1398: mtu of the broadcast/multicast routes

# Storm control (shoal.lan.storm): a token bucket per (sender, network), in packets.
LAN_STORM_RATE = 1000.0  # packets per second, sustained
LAN_STORM_BURST = 2000.0  # bucket size
LAN_STORM_MAX_KEYS = 65536  # buckets kept; idle full ones are forgotten first
LAN_LOG_INTERVAL = 10.0  # seconds: the LAN plane logs storm drops, MAC moves, refusals at most this often

# MAC learning (shoal.lan.mactable): like the Linux bridge's default ageing_time.
LAN_MAC_AGING = 300.0  # seconds without a frame from a MAC before its entry expires
LAN_MAC_MAX_PER_NETWORK = 4096
LAN_MAC_MAX_TOTAL = 65536

# Multicast snooping (shoal.lan.broadcast.Memberships): RFC 3376 8.4 group membership
# interval with the default robustness 2, query interval 125 s, response time 10 s.
LAN_GROUP_MEMBERSHIP_INTERVAL = 260.0
LAN_GROUP_MAX_PER_NETWORK = 1024

# Ethernet (IEEE 802.3, 802.1Q, 802.2; EtherTypes from the IEEE registry)
ETH_HEADER_LEN = 14
ETH_MIN_ETHERTYPE = 0x0600  # type/length >= this is an EtherType, <= 1500 a length
ETH_MAX_LENGTH = 1500
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # 802.1Q C-tag
ETHERTYPE_QINQ = 0x88A8  # 802.1ad S-tag
ETHERTYPE_QINQ_OLD = 0x9100  # pre-standard S-tag, still seen
ETHERTYPE_IPX = 0x8137
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_LLDP = 0x88CC
ETH_MAX_VLAN_TAGS = 2
LLC_SAP_IPX = 0xE0  # 802.2 LLC DSAP/SSAP of IPX ("Novell 802.2")
LLC_SAP_SNAP = 0xAA
LLC_UI = 0x03  # unnumbered information control byte
IPX_RAW_8023_CHECKSUM = 0xFFFF  # Novell raw 802.3: the IPX checksum field right after the length
IPX_HEADER_LEN = 30

# ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861), as answered by shoal.lan.arp
ARP_HTYPE_ETHERNET = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
ARP_PACKET_LEN = 28
IPPROTO_IGMP = 2
IPPROTO_ICMPV6 = 58
ICMPV6_MLD_QUERY = 130
ICMPV6_MLD_REPORT = 131
ICMPV6_MLD_DONE = 132
ICMPV6_ROUTER_SOLICITATION = 133
ICMPV6_ROUTER_ADVERTISEMENT = 134
ICMPV6_NEIGHBOR_SOLICITATION = 135
ICMPV6_NEIGHBOR_ADVERTISEMENT = 136
ICMPV6_REDIRECT = 137
ICMPV6_MLD2_REPORT = 143
ND_HOP_LIMIT = 255
ND_OPT_SOURCE_LINK_ADDR = 1
ND_OPT_TARGET_LINK_ADDR = 2
IGMP_V1_REPORT = 0x12
IGMP_V2_REPORT = 0x16
IGMP_V2_LEAVE = 0x17
IGMP_V3_REPORT = 0x22
IGMP_QUERY = 0x11


# --- Relay (issue #5; wire format: shoal.relay.frames, engine: shoal.relay.engine) ----------
# Frames start with RELAY_MAGIC: 0x53 has the top bits 01 (never STUN, whose first two bits
# are 00) and is no WireGuard message type (1..4), so a data socket can tell them apart.
RELAY_MAGIC = b"SR"
RELAY_VERSION = 2  # 2: tagged KEEPALIVE/PONG/ERROR (issue 18 F12)
RELAY_HEADER_SIZE = 4  # magic (2) + version (1) + kind (1)
RELAY_MAX_FRAME = 65535  # any relay frame, UDP datagram or WebSocket message
RELAY_TOKEN_SIZE = 8  # binding token handed out by AUTH_OK, echoed in SEND/KEEPALIVE
RELAY_NONCE_SIZE = 24  # challenge: 8-byte issue time (ms) + 16-byte MAC
RELAY_PROOF_SIZE = 16  # BLAKE2s-128 MAC proving the node (or the relay) holds its key
RELAY_TAG_SIZE = 16  # BLAKE2s-128 MAC on KEEPALIVE, PONG and ERROR under the binding's key
RELAY_HINT_INTERVAL = 1.0  # client: an untagged ERROR unauthenticated starts at most one re-auth this often
RELAY_CHALLENGE_TTL = 10.0  # seconds a challenge may be answered
RELAY_BINDING_TIMEOUT = 60.0  # a binding without any frame from its client for this long expires
RELAY_KEEPALIVE_INTERVAL = 25.0  # clients send KEEPALIVE at least this often (well inside the timeout)
RELAY_RATE_BYTES = 4 * 1024 * 1024  # per-node payload bytes per second
RELAY_BURST_BYTES = 1024 * 1024
RELAY_RATE_PACKETS = 4000  # per-node frames per second
RELAY_BURST_PACKETS = 1000
RELAY_AUTH_RATE = 200  # auth attempts per second, all clients together (each costs one X25519)
RELAY_AUTH_BURST = 400
RELAY_MAX_NODES = 65536  # authenticated bindings at once
RELAY_WS_PATH = "/relay"  # WebSocket endpoint (standalone `shoal relay` and the server's HTTP port)
RELAY_PORT = 3480  # default UDP and WebSocket port of a standalone `shoal relay`
RELAY_MEMBERSHIP_REFRESH = 2.0  # standalone `shoal relay`: seconds between reads of the server's memberships

# --- issue 18 F11: relay AUTH limits (shoal.relay.engine), after the membership check
RELAY_AUTH_RATE_PER_ADDRESS = 10.0  # AUTHs per second from one UDP source address (IPv6: /64)...
RELAY_AUTH_BURST_PER_ADDRESS = 20
RELAY_AUTH_RATE_PER_PREFIX = 50.0  # ...and from one /24 (IPv6: /48)
RELAY_AUTH_BURST_PER_PREFIX = 100
RELAY_AUTH_MAX_SOURCES = 16384  # buckets kept per level


# --- Disco: path discovery and hole punching (issue #5 part 3; wire format: shoal.nat.disco,
# engine: shoal.nat.paths). DISCO_MAGIC never starts a WireGuard message (type byte 1..4 then
# three zero bytes), a STUN message (first two bits 00) or a relay frame (b"SR").
DISCO_MAGIC = b"SHL\xf0\x9f\x90"
DISCO_VERSION = 1
DISCO_NONCE_LEN = 24  # XChaCha20-Poly1305 nonce, random per message
DISCO_TX_ID_LEN = 12
DISCO_MAX_CANDIDATES = 16  # per CallMeMaybe
DISCO_MAX_SIZE = 512  # bytes; larger datagrams with the magic are dropped unopened
DISCO_REPLAY_TTL = 60.0  # seconds a seen (sender, tx id) is remembered
DISCO_REPLAY_MAX = 8192  # remembered tx ids, all peers together (oldest forgotten first)
# Path engine timers (seconds)
PATH_PROBE_INTERVAL = 0.5  # initial probing: every candidate, this often...
PATH_PROBE_ROUNDS = 10  # ...this many times (5 s), then background re-probing
PATH_PING_TIMEOUT = 1.0  # a ping unanswered this long is a miss; the path is not usable
PATH_HEARTBEAT = 1.0  # ping the chosen direct path this often
PATH_TRUST = 2.5  # a path is alive this long after its last pong
PATH_REPROBE_INTERVAL = 4.0  # re-probe all candidates while relayed or not on the best path
PATH_SWITCH_MARGIN = 0.002  # a new path must beat the current RTT by this much (s) to take over
PATH_LAN_MARGIN = 0.005  # a private-address path wins ties within this RTT margin
PATH_MAX_LEARNED = 8  # peer-reflexive candidates learnt from pings, per peer
# Hard NAT (peer's mapping varies by destination, ours does not): predict, then spray.
PATH_PREDICT_WINDOW = 16  # ports just above each of the peer's observed reflexive ports
PATH_SPRAY_BUDGET = 1024  # probes per spray attempt (predicted + random ports)
PATH_SPRAY_RATE = 400  # probes per second while spraying (about 50 kB/s for 2.6 s)
PATH_SPRAY_START = 1.0  # the easy side starts spraying this long after the start moment...
PATH_BIRTHDAY_START = 0.5  # ...the hard side opens its birthday mappings before that
PATH_BIRTHDAY_SOCKETS = 256  # extra sockets on the hard side (ports its NAT opens toward the peer)
PATH_SPRAY_BACKOFF = 60.0  # seconds between spray attempts while still relayed
# Spray limits (issue 18 F10): probes (sprayed pings and birthday pings) per sliding window,
# token buckets shared by all of a daemon's path engines (shoal.nat.paths.SprayLimit)
PATH_SPRAY_WINDOW = 60.0  # seconds a budget below refills in
PATH_SPRAY_PEER_BUDGET = 1024  # probes toward one peer per window (one full spray attempt)
PATH_SPRAY_TARGET_BUDGET = 1024  # probes at one target IP per window, all peers together
PATH_SPRAY_MAX_KEYS = 4096  # buckets kept per level (full ones forgotten first)
PATH_CALL_ME_MAYBE_GAP = 1.0  # a CallMeMaybe starts a new probing burst at most this often (s)

# --- The coordination server's files
SERVER_DATA_DIR = "/var/lib/shoal/server"  # default `shoal server --data-dir` (server.key, shoal.db)

# --- The daemon's NAT traversal glue (shoal.daemon.traversal, shoal.nat.reflexive)
REFLEXIVE_REFRESH = 20.0  # seconds between STUN rounds on the data socket (keeps the mapping, notices changes)
REFLEXIVE_REFRESH_RELAYED = 4.0  # ...while some peer is relayed (a NAT that became easier is noticed soon)
HOST_ADDRESS_CHECK = 2.0  # seconds between looks at the host's own addresses (roaming)
RELAY_UDP_WAIT = 2.0  # seconds to wait for the UDP relay to accept us before trying its WebSocket
RELAY_SILENCE = 60.0  # a relay connection with no frame from the relay this long is redone
RELAY_RETRY = 5.0  # seconds between attempts to reach a relay that did not answer
RELAY_UDP_RETEST = 30.0  # while relaying over WebSocket: try the UDP relay again this often
RELAY_WS_OPEN_TIMEOUT = 3.0  # a relay WebSocket not open after this long is given up and tried again
RELAY_WS_QUICK_RETRIES = 3  # after a working relay WebSocket dropped: this many quick retries...
RELAY_WS_QUICK_RETRY = 0.5  # ...this far apart, before falling back to RELAY_RETRY
RELAY_WS_QUICK_OPEN_TIMEOUT = 1.5  # ...each given this long to open (not RELAY_WS_OPEN_TIMEOUT):
#                           a roamed host's first SYN can leave through a NAT whose conntrack
#                           still holds the old mapping, and its retransmissions then die the
#                           same way; a fresh connection from a new port gets through
RELAY_ACTIVE_KEEPALIVE = 0.5  # keepalive period while a peer is reached through the relay...
RELAY_REAUTH_AFTER = 1.0  # ...and a keepalive unanswered this long: authenticate again on the
#                           same transport (the relay does not answer a KEEPALIVE from an address
#                           it does not know: our NAT mapping changed, we roamed)
RELAY_PONG_TIMEOUT = 3.0  # a keepalive unanswered this long: the relay connection is redone
RELAY_AUTH_RETRY = 2.0  # a relay that answered but has not accepted us this long gets a new HELLO...
RELAY_AUTH_RETRY_MAX = 32.0  # ...the wait doubling up to this (refused: not a member yet, full, lost frames)
BIRTHDAY_HOLD = 10.0  # birthday sockets no chosen path uses close this long after their last send
VIRTUAL_ENDPOINT_PREFIX = "100::"  # RFC 6666 discard-only: relayed peers' endpoints inside the engine

# --- Control channel: admission before Noise completes (issue 18 F7; shoal.control.limits,
# used by shoal.server.app). A control session is "unauthenticated" from the WebSocket accept
# until the node's first transport frame decrypts. Refusals happen before any X25519 work:
# the WebSocket is closed at once with CLOSE_TRY_AGAIN_LATER (1013, RFC 6455 "Try Again Later").
CONTROL_HANDSHAKE_TIMEOUT = 5.0  # seconds from the WebSocket accept to the node's first frame
CONTROL_PREAUTH_MAX = 512  # unauthenticated sessions at once, the whole server
CONTROL_PREAUTH_PER_ADDR = 16  # ...from one source address
CONTROL_PREAUTH_PER_PREFIX = 64  # ...from one source prefix (below)
CONTROL_PREFIX_V4 = 24  # prefix lengths that group source addresses (a home, an office, a host)
CONTROL_PREFIX_V6 = 56
# Handshake starts (token buckets: burst, then per second), so X25519 work is bounded too.
# A login storm after a server restart (a whole office behind one NAT) fits in the bursts;
# what does not is refused with 1013 and the daemon retries with its backoff.
CONTROL_HANDSHAKE_BURST_PER_ADDR = 32
CONTROL_HANDSHAKE_RATE_PER_ADDR = 4.0
CONTROL_HANDSHAKE_BURST_PER_PREFIX = 128
CONTROL_HANDSHAKE_RATE_PER_PREFIX = 16.0
CONTROL_HANDSHAKE_BURST = 1000  # the whole server (one server handshake: about 0.5 ms of CPU)
CONTROL_HANDSHAKE_RATE = 400.0
CONTROL_ADMISSION_MAX_ENTRIES = 65536  # source addresses / prefixes remembered (least recent dropped)
CONTROL_REPLAY_CACHE = 65536  # message1 ephemeral keys remembered: a replay is refused before X25519

# --- Control channel: per-session rate limits (issue 18 F8; shoal.control.limits). One token
# bucket per message class and session: (burst, per second). A request over its limit is
# answered Result(ok=False, code="rate_limited") and not carried out; a Ping or PeerReport
# over its limit is dropped; Candidates and ResyncRequest are coalesced (only the latest is
# carried out: a Candidates at most every CONTROL_CANDIDATES_COALESCE, a resync when its
# bucket allows). Every message over a limit
# also takes a token from the session's excess bucket; when that is empty the session gets
# Error(code="rate_limited") and is closed with CLOSE_RATE_LIMITED (4029).
CONTROL_RATE_CHEAP = (50, 20.0)  # Ping, PeerReport (answered to the sender only)
CONTROL_RATE_FANOUT = (20, 2.0)  # requests that change what co-members see (SetOnline, SetNickname, ...)
CONTROL_RATE_PASSWORD = (4, 0.5)  # requests that may hash a password (CreateNetwork, JoinNetwork, SetPassword)
CONTROL_RATE_CANDIDATES = (20, 2.0)  # Candidates arriving (those carried out: one per CONTROL_CANDIDATES_COALESCE)
CONTROL_RATE_RESYNC = (4, 0.2)  # ResyncRequest (a whole FullView each)
CONTROL_CANDIDATES_COALESCE = 0.5  # seconds: Candidates within this of the last carried out wait, latest wins
CONTROL_RATE_EXCESS = (100, 5.0)  # messages over their limit a session may send before it is closed

# --- Control channel: large views (issue 18 F9; shoal.control.messages.split_view). A view
# message that encodes to more than VIEW_PART_BYTES is sent as parts (a FullView or ViewUpdate
# with more=True, then ViewUpdates), each at most VIEW_PART_BYTES unless one record is bigger
# (a record always fits MAX_SERVER_FRAME by the field limits).
VIEW_PART_BYTES = 1024 * 1024

# --- Server: new nodes, addresses, node expiry, bans by source (issue 18 F5, F6; shoal.server.core).
# A source prefix groups the addresses a node connects from (a home, an office, an IPv6 site).
NODE_SOURCE_PREFIX_V4 = 24
NODE_SOURCE_PREFIX_V6 = 48  # an IPv6 site gets a /48: a fresh address inside it is the same source
# New-node registrations (first Login of a key), token buckets (burst, then per second). Over
# them the Login gets Error(code "registration_limited") and close CLOSE_REFUSED (4004). Loopback
# and unknown sources are not limited (the server host's own processes, e.g. tests).
REGISTRATION_BURST_PER_PREFIX = 32  # an office behind one NAT onboarding at once fits...
REGISTRATION_RATE_PER_PREFIX = 4 / 60  # ...then 4 a minute
REGISTRATION_BURST = 1000  # the whole server: many sites onboarding at once fit...
REGISTRATION_RATE = 1.0  # ...and 30 days (NODE_EXPIRY) at 1/s = 2.6 M nodes < the 4.1 M addresses
REGISTRATION_MAX_ENTRIES = 65536  # source prefixes remembered (least recent dropped)
IPV4_PROBE_MAX = 64  # hashed probes for a new node's IPv4, then...
IPV4_SCAN_MAX = 4096  # ...a scan of this many addresses from the last probe; none free: refused
NODE_EXPIRY = 30 * 86400.0  # a node unseen this long that is in no network (pending aside) and
#                             banned from none is deleted; its addresses go back to the pool
# --- Network passwords (issue 18 F3, F4; shoal.server.core, shoal.server.app). Hashing and
# verifying (scrypt, shoal.server.passwords) run as jobs on a bounded worker pool, never on the
# server's event loop; a job the pool has no room for is answered Result(code "busy").
PASSWORD_MIN_LENGTH = 8  # characters; a network created or re-keyed from now on needs at least this
PASSWORD_WORK = (5, 0.5)  # scrypt jobs per node (burst, per second), across its sessions: Result "rate_limited"
PASSWORD_POOL_WORKERS = 2  # threads (hashlib.scrypt releases the GIL)
PASSWORD_POOL_PENDING = 16  # jobs submitted and not finished (running ones included); more: "busy"
# Wrong join passwords (failure budgets, token buckets: burst, then per second). A join is
# refused "rate_limited" without any check while one of its three budgets is empty:
PASSWORD_FAIL_NODE = (10, 10 / 60)  # per node key
PASSWORD_FAIL_PREFIX = (30, 0.5)  # per source prefix (NODE_SOURCE_PREFIX_V4/V6; new keys are free, addresses are not)
PASSWORD_FAIL_NETWORK = (60, 0.1)  # per network name (existing or not: no existence oracle)
PASSWORD_FAIL_TABLE_MAX = 16384  # prefixes / names remembered (least recent dropped)
