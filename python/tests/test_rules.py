"""The rules this package shares with the Rust side, case by case as the Rust tests state them:
socket specs, which socket a client tries, whom it trusts, how names are escaped."""

import ipaddress
import os
import shutil
import socket
import tempfile

import pytest

import portbroker
from portbroker import escaped, parse_spec
from portbroker.paths import client_socket_paths
from portbroker.protocol import SocketSpec, Transport
from portbroker.trust import trusted


def test_specs_parse_in_the_documented_forms():
    assert parse_spec("tcp:8080") == SocketSpec(Transport.TCP, None, 8080)
    assert parse_spec("tcp:127.0.0.1:0") == SocketSpec(
        Transport.TCP, ipaddress.IPv4Address("127.0.0.1"), 0
    )
    assert parse_spec("udp:[::1]:5353") == SocketSpec(
        Transport.UDP, ipaddress.IPv6Address("::1"), 5353
    )
    for text in ["tcp:8080", "tcp:127.0.0.1:0", "udp:[::1]:5353", "udp:[::]:1"]:
        assert str(parse_spec(text)) == text


@pytest.mark.parametrize(
    "text, reason",
    [
        ("8080", "no protocol"),
        ("sctp:80", "tcp or udp"),
        ("tcp:65536", "0 to 65535"),
        ("tcp:", "0 to 65535"),
        ("tcp:-1", "0 to 65535"),
        ("tcp:::1:80", "brackets"),
        ("tcp:[::1]80", "followed by :PORT"),
        ("tcp:localhost:80", "not an IPv4 address"),
        ("tcp:[fe80::1%eth0]:80", "not an IPv6 address"),
        ("tcp:[::ffff:127.0.0.1]:80", "IPv4-mapped"),
    ],
)
def test_malformed_specs_are_refused_with_a_reason(text, reason):
    with pytest.raises(portbroker.SpecError) as raised:
        parse_spec(text)
    assert reason in str(raised.value) and text in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_a_malformed_spec_sends_nothing(tmp_path):
    # Nothing listens there: a SpecError, not Unreachable, shows that parsing came first... and
    # lease() connects first, so use a broker-free check of the helper it calls.
    from portbroker.broker import _specs
    from portbroker.protocol import Listen

    with pytest.raises(portbroker.SpecError):
        _specs(("tcp:80", "bogus"), Listen.Default(), Listen.Default(), False)


def test_the_environment_variable_is_the_only_path_when_set():
    env = {"PORTBROKER_SOCKET": "/x.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert client_socket_paths(env, euid=1000) == ["/x.sock"]
    assert client_socket_paths({"PORTBROKER_SOCKET": "/x.sock"}, euid=0) == ["/x.sock"]


def test_an_ordinary_user_tries_its_own_broker_then_the_system_one():
    expected = ["/run/user/1000/portbroker/portbroker.sock", "/run/portbroker/portbroker.sock"]
    assert client_socket_paths({"XDG_RUNTIME_DIR": "/run/user/1000"}, euid=1000) == expected
    # An empty variable counts as unset.
    env = {"PORTBROKER_SOCKET": "", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert client_socket_paths(env, euid=1000) == expected


def test_without_a_runtime_dir_and_as_root_the_system_broker_is_the_one():
    system = ["/run/portbroker/portbroker.sock"]
    assert client_socket_paths({}, euid=1000) == system
    assert client_socket_paths({"XDG_RUNTIME_DIR": ""}, euid=1000) == system
    assert client_socket_paths({"XDG_RUNTIME_DIR": "/run/user/0"}, euid=0) == system


def test_root_and_oneself_are_trusted_and_others_only_when_named():
    assert trusted(0, 1000, None), "root's broker"
    assert trusted(1000, 1000, None), "the user's own broker"
    assert not trusted(1001, 1000, None), "another user's"
    assert not trusted(1000, 0, None), "root trusts no user's broker"
    assert trusted(1001, 1000, "1001")
    assert trusted(1001, 1000, " 1001\n")
    assert not trusted(1001, 1000, "1002")
    for bogus in ["", "root", "-1", "1001,1002", "4294967296", "1_001", "0x3e9"]:
        assert not trusted(1001, 1000, bogus), bogus


@pytest.mark.skipif(os.geteuid() != 0, reason="a broker of another user needs root to set up")
def test_a_broker_of_another_user_is_refused_before_anything_is_sent(monkeypatch):
    # Not under tmp_path, whose parent only root may enter.
    directory = tempfile.mkdtemp(prefix="portbroker-impostor-")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "impostor.sock")
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:  # the impostor: nobody, listening where the broker would
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            server.listen()
            os.write(ready_w, b"r")
            conn, _ = server.accept()
            conn.settimeout(10)
            received = conn.recv(100)  # b"" once the client hangs up
            os.write(report_w, str(len(received)).encode())
        except BaseException as error:
            os.write(report_w, repr(error).encode())
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(report_w)
    try:
        assert os.read(ready_r, 1) == b"r", os.read(report_r, 1000)
        monkeypatch.delenv("PORTBROKER_TRUST_UID", raising=False)
        with pytest.raises(portbroker.UntrustedBroker) as raised:
            portbroker.connect(path)
        text = str(raised.value)
        assert "runs as uid 65534, neither root nor this user (uid 0)" in text
        assert "set PORTBROKER_TRUST_UID=65534" in text
        assert os.read(report_r, 16) == b"0", "the client sent bytes to the impostor"
    finally:
        os.waitpid(child, 0)
        shutil.rmtree(directory)


def test_escaped_leaves_printable_text_alone():
    for text in ["", "nginx", "python3", "a b-c_d.e", "r\u00e9seau", "\u65e5\u672c", "\"'{}"]:
        assert escaped(text) == text


@pytest.mark.parametrize(
    "text, shown",
    [
        ("ev\x1b[31m\nil", r"ev\x1b[31m\nil"),
        ("\r\t\0\x07\x7f", r"\r\t\x00\x07\x7f"),
        ("\u009b2J\u0085", r"\u{9b}2J\u{85}"),
        ("abc\u202efed\u200b\ufeff\u2028", r"abc\u{202e}fed\u{200b}\u{feff}\u{2028}"),
        ("e\u0301", r"e\u{301}"),
        (r"\x1b", r"\\x1b"),
    ],
)
def test_escaped_escapes_what_does_not_print_as_the_rust_side_does(text, shown):
    assert escaped(text) == shown


def test_escaped_output_never_holds_a_control_or_unprintable_character():
    shown = escaped("".join(chr(c) for c in range(0x3000)))
    assert all(c.isprintable() for c in shown)


def test_an_ipv6_only_spec_and_socket_say_so_as_portctl_does():
    import dataclasses

    from portbroker.protocol import GrantedSocket
    from portbroker.wire import SocketAddr

    spec = dataclasses.replace(parse_spec("tcp:[::]:6379"), v6_only=True)
    assert str(spec) == "tcp:[::]:6379 (IPv6 only)"
    wildcard = SocketAddr(ipaddress.IPv6Address("::"), 6379)
    assert str(GrantedSocket(Transport.TCP, wildcard, True, True)) == "tcp:[::]:6379 (IPv6 only)"
    loopback = SocketAddr(ipaddress.IPv6Address("::1"), 6379)
    assert str(GrantedSocket(Transport.TCP, loopback, True, True)) == "tcp:[::1]:6379"
