"""Node key file (0600, made once, never silently replaced) and the pinned server."""

from __future__ import annotations

import os
import stat

import pytest

from shoal.daemon import identity
from shoal.daemon.identity import IdentityError, ServerPin, load_or_create_node_key, load_pin, save_pin
from shoal.wireguard.keys import PrivateKey


def test_node_key_made_on_first_start_with_mode_0600_and_kept(tmp_path):
    state = tmp_path / "state"
    key, created = identity.load_or_create_node_key(state)
    assert created
    assert stat.S_IMODE((state / "node.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    again, created2 = identity.load_or_create_node_key(state)
    assert again == key and not created2


def test_readable_key_is_refused(tmp_path):
    identity.load_or_create_node_key(tmp_path)
    os.chmod(tmp_path / "node.key", 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load_or_create_node_key(tmp_path)


def test_open_state_dir_or_pin_is_refused(tmp_path):
    """F20: an existing state dir (or server.json) that group/others can reach is refused."""
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    with pytest.raises(IdentityError, match="chmod 700"):
        load_or_create_node_key(state)
    assert not (state / "node.key").exists()
    os.chmod(state, 0o700)
    key, _ = load_or_create_node_key(state)
    save_pin(state, ServerPin("http://192.0.2.1:8080", key.public_key()))
    os.chmod(state / "server.json", 0o666)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_pin(state)


def test_damaged_key_is_refused_not_replaced(tmp_path):
    path = tmp_path / "node.key"
    path.write_text("garbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not a node key"):
        identity.load_or_create_node_key(tmp_path)
    assert path.read_text() == "garbage\n"


@pytest.mark.parametrize("url,want", [
    ("192.0.2.1:8080", "http://192.0.2.1:8080"),
    ("http://192.0.2.1:8080/", "http://192.0.2.1:8080"),
    ("https://example.test", "https://example.test"),
    ("http://[2001:db8::1]:8080", "http://[2001:db8::1]:8080"),
])
def test_normalize_server_url(url, want):
    assert identity.normalize_server_url(url) == want


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://h:99999", "http://h:1/path", ""])
def test_bad_server_urls(url):
    with pytest.raises(ValueError):
        identity.normalize_server_url(url)


def test_control_url():
    assert identity.control_url("192.0.2.1:8080") == "ws://192.0.2.1:8080/control"
    assert identity.control_url("https://h") == "wss://h/control"


def test_pin_round_trip_and_clear(tmp_path):
    assert identity.load_pin(tmp_path) is None
    pin = ServerPin("http://192.0.2.1:8080", PrivateKey.generate().public_key())
    identity.save_pin(tmp_path, pin)
    assert stat.S_IMODE((tmp_path / "server.json").stat().st_mode) == 0o600
    assert identity.load_pin(tmp_path) == pin
    key = PrivateKey.generate()
    identity.save_view(tmp_path, key, b"\x01view")
    assert stat.S_IMODE((tmp_path / "view.bin").stat().st_mode) == 0o600
    assert identity.load_view(tmp_path, key) == b"\x01view"
    identity.clear_pin(tmp_path)
    assert identity.load_pin(tmp_path) is None and identity.load_view(tmp_path, key) is None


def test_stored_view_is_refused_when_edited_truncated_unsealed_or_another_nodes(tmp_path):
    key, other = PrivateKey.generate(), PrivateKey.generate()
    identity.save_view(tmp_path, key, b"\x01frame-with-peers")
    good = (tmp_path / "view.bin").read_bytes()
    assert good.startswith(identity.VIEW_MAGIC)
    with pytest.raises(identity.ViewRefused):
        identity.load_view(tmp_path, other)  # copied from another node
    bad = [good[:-1] + bytes([good[-1] ^ 1]),  # one bit of the frame
           good[:10] + bytes([good[10] ^ 0x80]) + good[11:],  # one bit of the MAC
           good + b"extra peer", good[:20], b"", b"\x01frame-with-peers",  # appended, cut, old unsealed format
           identity.VIEW_MAGIC + bytes(32) + b"\x01forged"]
    for data in bad:
        (tmp_path / "view.bin").write_bytes(data)
        with pytest.raises(identity.ViewRefused):
            identity.load_view(tmp_path, key)
    (tmp_path / "view.bin").write_bytes(good)
    assert identity.load_view(tmp_path, key) == b"\x01frame-with-peers"


def test_damaged_pin_is_reported(tmp_path):
    (tmp_path / "server.json").write_text("{not json")
    os.chmod(tmp_path / "server.json", 0o600)
    with pytest.raises(IdentityError, match="logout"):
        identity.load_pin(tmp_path)


def test_state_writes_never_follow_a_planted_temp_file(tmp_path):
    """F20: the old writer opened the predictable .NAME.<pid>.tmp with O_CREAT|O_TRUNC, following
    a symlink planted there; the writes now use a fresh O_EXCL temp file."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    state = tmp_path / "state"
    key, _ = load_or_create_node_key(state)
    (state / f".server.json.{os.getpid()}.tmp").symlink_to(victim)
    (state / f".view.bin.{os.getpid()}.tmp").symlink_to(victim)
    save_pin(state, ServerPin("http://192.0.2.1:8080", key.public_key()))
    identity.save_view(state, key, b"frame")
    assert victim.read_bytes() == b"keep"
    assert load_pin(state).url == "http://192.0.2.1:8080"
