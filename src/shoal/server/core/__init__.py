"""The coordination core: who is who, which networks exist, who sees whom (sans-IO).

Owns: the coordination state (nodes, networks, memberships, bans) and every rule about it,
the per-node views with their versions, and presence. No sockets, no asyncio, no clock:
the glue (`shoal.server.app`) feeds it events with `now` (monotonic seconds) and carries out
what it returns. The message contract is `shoal.control.messages`.

Inputs (each returns `Effects`):

    connect(session, node_key, now, remote_ip=None)   a Noise session was authenticated
    receive(session, message, now)                    a decoded ClientMessage on it
    disconnect(session, now)                          the connection ended (any reason)
    handle_timer(now)                                 at or after next_deadline()
    password_done(job_id, value, now)                 a PasswordJob finished (value = job.run())
    password_failed(job_id, code, message, now)       a PasswordJob could not run ("busy")

Outputs: `Effects.out`, an ordered list of `Send(session, node_key, message)` and
`Close(session, code, reason)`; `Effects.persist`, an ordered list of write intents
(`PutNode`, `DeleteNode`, `PutNetwork`, `DeleteNetwork`, `PutMember`, `DeleteMember`, `PutBan`) that the
store applies in one transaction before the glue sends `out` (write-through: what a node
was told survives a restart); `Effects.jobs`, scrypt work (`PasswordJob`) the glue runs off
the event loop. `Core.from_state` rebuilds the core from stored records.

Password work (issue 18 F3). The core never runs scrypt itself. A request that needs a hash
(create, set_password) or a verification (join, unless the fast path below answers) is
checked as far as it can be, changes nothing, and leaves a PasswordJob in `Effects.jobs`
instead of a Result; when the glue hands the job's value back (`password_done`), the request
is carried out from the start with every rule checked again (the state may have changed
meanwhile: a name taken, the password changed, the node evicted) and its Result is sent
then. So Results of password requests may overtake earlier requests' (clients match by
req_id). Each job takes a token of the node's work bucket (PASSWORD_WORK, kept across its
sessions); when it is empty the request is refused `rate_limited` without any work. A job the
glue has no room for is answered by `password_failed` (code "busy").

Identity. A node is its Noise static key. First Login registers it: node id = the first 6
base32 characters (a-z, 2-7) of BLAKE2s(key) (longer on a collision), nickname "node-<id>",
an IPv4 in 100.64.0.0/10 picked by hashing the key (probing on collision) and an IPv6 =
the server's ULA /48 prefix with the IPv4's 32 bits as the interface id (unique because the
IPv4 is). Never allocated: 100.64.0.0/24 (kept for services the server may offer later)
and any address whose last octet is 0 or 255 (some stacks treat those as special).

Registration limits (issue 18 F6). A node's *source prefix* is the /NODE_SOURCE_PREFIX_V4
(24) or /NODE_SOURCE_PREFIX_V6 (48) around the address its session comes from
(`NodeRec.last_prefix`, updated at every Login); loopback and unknown sources have none.
A first Login from a source with a prefix needs a token from that prefix's bucket
(REGISTRATION_BURST_PER_PREFIX, then REGISTRATION_RATE_PER_PREFIX per second) and from the
server's (REGISTRATION_BURST, REGISTRATION_RATE); a refusal by a limit spends nothing, the
address search spends one of each (found or not, so a full pool is no free CPU sink). The IPv4 search is bounded: IPV4_PROBE_MAX hashed probes, then IPV4_SCAN_MAX
consecutive addresses from the last probe (wrapping inside the pool). A first Login over a
limit or without a free address is refused: Error(code "registration_limited" |
"address_pool_full") then Close(CLOSE_REFUSED, 4004); nothing is stored. Known keys always
log in.

Expiry (F6). A node *expires* when it has been away (no session, not present) for
NODE_EXPIRY seconds of wall time since `NodeRec.last_seen` (written whenever it becomes or
stops being present), is in no network except as a pending request, and no network bans it
(a banned node is kept, so that its key stays banned). An expired node is deleted (its
pending requests first: `DeleteMember`s, then `DeleteNode`); its addresses return to the pool
and its key would register as a new node. Owners and members never expire. `handle_timer`
expires nodes when due (one heap entry per away node; see `next_deadline`).

Bans by source prefix (issue 18 F5). A ban records the banned node's last source prefix
(`BanRec.prefix`). A join by another key whose source prefix equals the prefix of a ban in
that network is not let in directly: it is recorded as a pending request with
`MemberRec.note` = "banned_prefix" (members see it in MemberInfo.note), so the owner decides
with approve / reject (reject --ban bans that key too); approving clears the note. Other
networks and other prefixes are not affected; loopback has no prefix (nothing is recorded).

Networks. Name unique (case-insensitive), password stored as a salted scrypt hash
(`shoal.server.passwords`), owner = creator. Every network created or re-keyed needs a
password of at least PASSWORD_MIN_LENGTH characters (`weak_password`); there are no open
networks (a network anyone may ask to join is one with approval "manual" and a password
its owner shares). A network stored with a shorter password (from before that rule) still
admits that password, until its owner sets a new one. Rules, checked in this order; a
refused request returns Result(ok=False, code) and changes nothing:

    create   invalid (bad name / too many networks) | name_taken | unsupported (l2)
             | weak_password | (hash job) | rate_limited (work budget) | busy
    join     (already member: ok) | (pending: pending_approval) | rate_limited (a wrong-
             password budget is empty) | (verify job) | rate_limited (work budget) | busy
             | wrong_password | banned | locked | unsupported | invalid (full / too many
             networks) | approval manual, or from a banned node's source prefix (note
             "banned_prefix") -> membership recorded as pending, Result code pending_approval
    leave    no_such_network | not_member | owner_cannot_leave (the owner deletes instead)
    delete   no_such_network | not_owner
    set_online / set_password / set_access / approve / reject / evict:
             no_such_network | not_member / not_owner | invalid (bad target or argument)
    reject   target must be pending (not_member otherwise); ban=True also bans
    evict    target must be a member other than the owner; ban=True also bans (an already
             evicted node may be banned later: evict ban=True on a non-member who is banned
             or bannable is ok)

    set_password adds weak_password | (hash job) | rate_limited | busy after not_owner

Repeating a request that already took effect succeeds and changes nothing (idempotent).
No existence oracle (F4): a join to a network that does not exist, that bans the node or
that is locked is answered exactly as a wrong password ("wrong_password", the same message
naming what was typed) unless the password is right: for a name that does not exist the
core verifies against a dummy hash with the same parameters (the same job, the same work).
Only a node that gave the right password learns banned/locked. Wrong passwords spend three
budgets (token buckets, `shoal.control.limits`): the node's (PASSWORD_FAIL_NODE), its
source prefix's (PASSWORD_FAIL_PREFIX; the node's source prefix as below, loopback
included, from `connect(remote_ip=...)`) and the typed name's (PASSWORD_FAIL_NETWORK, for existing
and missing names alike); while any is empty a join is refused `rate_limited` before any
check. A password already verified once for a network is remembered in memory only as an
HMAC under a per-process secret (fast path for the next joiner: no job); changing the
password forgets it.

Presence. A member is *online* in a network when it is an approved member, has set itself
online there (the default on create/join/approve), and its node is *present*. A node is
present while it has a logged-in session; when that session drops without Logout it stays
present for PRESENCE_GRACE seconds (a reconnect inside the grace changes nothing for its
peers); when the server starts, every node that was present when it stopped (`NodeRec.present`
is written through) is present for PRESENCE_GRACE from the start, so a server restart tears
no tunnel down. Logout, SetOnline(false), leave, evict and delete take effect at once.

Peer checks (for sessions whose Login lists "check_peer"; see messages.py). When a node's
session drops without Logout, its peers get CheckPeer(node, active=True): they probe the
tunnel and answer PeerReport. A PeerReport(reachable=True) from a current peer of a node in
grace (no session) moves that node's grace end to now + PRESENCE_GRACE: a node that lost only
its path to the server stays online as long as a peer still reaches it, and goes offline one
grace period after the last peer did. When the node logs in again its peers get
CheckPeer(active=False); a node that logs in gets CheckPeer(active=True) for each of its peers
that is in grace (e.g. after a server restart, or a peer that is still away).

Views. A node's view is its networks (pending ones included: a pending member sees only the
owner and itself), their members, and its peers (nodes sharing a network where both are
online). After Login the node gets LoginOk and a FullView; every later change is a
ViewUpdate computed by diffing against what that session was last sent (so a no-op change
sends nothing, and a node never gets a delta it cannot apply). Versions are per node, grow by
one per ViewUpdate and never go back while the server runs; a ResyncRequest (or a new Login)
gets a FullView at the current version. Login.have_version is informational only. A view
message over VIEW_PART_BYTES goes out as consecutive parts (`messages.split_view`, "Large
views" in messages.py): one version step however many parts, each a Send of its own.

Endpoints and candidates (Login.endpoints, Candidates) are kept only in the strict form of
`shoal.endpoint` and only for usable addresses (public or private; never loopback,
unspecified, multicast, link-local, reserved or overlay); any other entry is dropped, the
rest of the message still applies (never an exception, never a closed session). Login adds
the address the connection came from with the Login's listen_port. That address, when it is
public, is also the node's PeerInfo.observed_ip (issue 18 F10: the only IP its peers spray
before a pong proves another): set at each Login, kept through the grace like candidates.

Protocol errors the core detects (anything before Login, a second Login): Error
(code "protocol_error") then Close(4002) for that session only; the node gets the grace as
for a dropped connection. Attribute owners: all state here is mutated only by the Core
methods above, called from one task (the glue serializes them).

Layout (issue 12). One shared state, the rules as modules over it: `state` (records, indexes,
runtime state, queries: `State`), `effects` (write intents and outputs), `addressing` (ULA
prefix, node ids, IPv4/IPv6 allocation, source prefixes), `views` (full views, dirty
tracking, ViewUpdate diffing), `presence` (present/grace, peer checks, expiry,
`next_deadline`), `networks` (the network requests and password checks) and `dispatch`
(`Core`: the inputs, Login and registration). Who may use the relay is
`shoal.relay.authz.may_relay`, shared with the standalone relay.
"""

from __future__ import annotations

from shoal.server.core.addressing import IPV4_POOL, IPV4_RESERVED, make_ula_prefix
from shoal.server.core.dispatch import Core
from shoal.server.core.effects import (
    Close, DeleteMember, DeleteNetwork, DeleteNode, Effects, PasswordJob, Persist, PutBan, PutMember, PutNetwork,
    PutNode, Send,
)
from shoal.server.core.state import PRESENCE_GRACE, BanRec, MemberRec, NetworkRec, NodeRec

__all__ = [
    "Core", "Effects", "Send", "Close", "PasswordJob", "NodeRec", "NetworkRec", "MemberRec", "BanRec",
    "PutNode", "DeleteNode", "PutNetwork", "DeleteNetwork", "PutMember", "DeleteMember", "PutBan", "Persist",
    "PRESENCE_GRACE", "IPV4_POOL", "IPV4_RESERVED", "make_ula_prefix",
]
