"""Tests for ringkv.server.config: addresses, peers and the node configuration."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.validation import DEFAULT_MAX_VALUE_BYTES, Limits
from ringkv.server.config import (
    ConfigError,
    HostPort,
    NodeConfig,
    Peer,
    parse_peers,
    validate_node_id,
)
from ringkv.storage import FsyncMode

PROPERTY = settings(max_examples=200, deadline=None)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- HostPort.parse ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", HostPort("127.0.0.1", 50051)),
        ("localhost:1", HostPort("localhost", 1)),
        ("db-1.example.com:65535", HostPort("db-1.example.com", 65535)),
        (":50051", HostPort("", 50051)),
        ("0.0.0.0:8080", HostPort("0.0.0.0", 8080)),
        ("[::1]:50051", HostPort("::1", 50051)),
        ("[::]:50051", HostPort("::", 50051)),
        ("[2001:db8::7]:443", HostPort("2001:db8::7", 443)),
        ("[::ffff:10.0.0.1]:5", HostPort("::ffff:10.0.0.1", 5)),
        ("  127.0.0.1:50051  ", HostPort("127.0.0.1", 50051)),
        ("\t:50051\n", HostPort("", 50051)),
    ],
)
def test_parse_valid(text: str, expected: HostPort) -> None:
    assert HostPort.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "h:0",
        "h:65536",
        "h:99999",
        "h:abc",
        "h:",
        "h:-1",
        "h:+80",
        "h:8 0",
        "h: 80",
        "h:80.0",
        ":",
        "[::1]:0",
        "[::1]:65536",
    ],
)
def test_parse_rejects_bad_ports(text: str) -> None:
    with pytest.raises(ConfigError, match="no valid port"):
        HostPort.parse(text)


def test_port_zero_is_rejected_by_default() -> None:
    with pytest.raises(ConfigError, match=r"no valid port \(1-65535\)"):
        HostPort.parse(":0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":0", HostPort("", 0)),
        ("127.0.0.1:0", HostPort("127.0.0.1", 0)),
        ("[::1]:0", HostPort("::1", 0)),
    ],
)
def test_port_zero_where_allowed(text: str, expected: HostPort) -> None:
    assert HostPort.parse(text, allow_port_zero=True) == expected


@pytest.mark.parametrize("text", [":65536", ":-1", ":x", "h"])
def test_allow_port_zero_still_rejects_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        HostPort.parse(text, allow_port_zero=True)


def test_allow_port_zero_names_the_range() -> None:
    with pytest.raises(ConfigError, match=r"no valid port \(0-65535\)"):
        HostPort.parse(":65536", allow_port_zero=True)


@pytest.mark.parametrize("text", ["", "   ", "localhost", "50051", "127.0.0.1"])
def test_parse_rejects_a_missing_colon(text: str) -> None:
    with pytest.raises(ConfigError, match="is not host:port"):
        HostPort.parse(text)


@pytest.mark.parametrize(
    "text", ["[::1]", "[::1:80", "::1:50051", "::1", "2001:db8::7:443", "fe80::1:80"]
)
def test_parse_rejects_unbracketed_ipv6(text: str) -> None:
    with pytest.raises(ConfigError, match="in brackets"):
        HostPort.parse(text)


@pytest.mark.parametrize("text", ["[]:80", "[localhost]:80", "[1.2.3.4]:80", "[::g]:80"])
def test_parse_rejects_invalid_bracketed_ipv6(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid IPv6 host"):
        HostPort.parse(text)


@pytest.mark.parametrize(
    "text",
    ["my host:80", "h :80", "h\t:80", "a/b:80", "a,b:80", "a=b:80", "u@h:80"],
)
def test_parse_rejects_invalid_hosts(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid host"):
        HostPort.parse(text)


def test_parse_names_what_it_parses() -> None:
    with pytest.raises(ConfigError, match=r"^listen address 'nope' is not host:port$"):
        HostPort.parse("nope", what="listen address")


@pytest.mark.parametrize("text", ["h:\u00b2", "h:\u0668\u0660", "h:\uff18\uff10"])
def test_parse_rejects_non_ascii_digits_in_port(text: str) -> None:
    with pytest.raises(ConfigError, match="no valid port"):
        HostPort.parse(text)


@pytest.mark.parametrize("text", ["[abc:80", "abc]:80"])
def test_parse_rejects_unbalanced_brackets(text: str) -> None:
    with pytest.raises(ConfigError):
        HostPort.parse(text)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (HostPort("127.0.0.1", 50051), "127.0.0.1:50051"),
        (HostPort("example.com", 1), "example.com:1"),
        (HostPort("", 50051), ":50051"),
        (HostPort("::1", 50051), "[::1]:50051"),
        (HostPort("::", 7), "[::]:7"),
    ],
)
def test_str(address: HostPort, text: str) -> None:
    assert str(address) == text
    assert HostPort.parse(text) == address


@pytest.mark.parametrize(
    ("address", "wildcard"),
    [
        (HostPort("", 1), True),
        (HostPort("0.0.0.0", 1), True),
        (HostPort("::", 1), True),
        (HostPort("127.0.0.1", 1), False),
        (HostPort("::1", 1), False),
        (HostPort("localhost", 1), False),
        (HostPort("10.0.0.0", 1), False),
    ],
)
def test_is_wildcard(address: HostPort, wildcard: bool) -> None:
    assert address.is_wildcard is wildcard


hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True
)
ports = st.integers(min_value=1, max_value=65535)


@given(host=st.one_of(hostnames, st.just("")), port=ports)
@PROPERTY
def test_hostname_round_trips(host: str, port: int) -> None:
    address = HostPort(host, port)
    assert HostPort.parse(str(address)) == address
    assert HostPort.parse(f"{host}:{port}") == address


@given(ip=st.ip_addresses(), port=ports)
@PROPERTY
def test_ip_address_round_trips(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    address = HostPort(str(ip), port)
    text = str(address)
    if ip.version == 6:
        assert text == f"[{ip}]:{port}"
    assert HostPort.parse(text) == address


@given(
    host=st.sampled_from(["", "h", "127.0.0.1", "[::1]"]),
    port=st.integers(min_value=65536, max_value=1 << 32),
)
@PROPERTY
def test_ports_above_65535_are_rejected(host: str, port: int) -> None:
    with pytest.raises(ConfigError):
        HostPort.parse(f"{host}:{port}")


# --- node ids ------------------------------------------------------------------------


@pytest.mark.parametrize("node_id", ["n", "node1", "x" * 64, "127.0.0.1:50052", "[::1]:5"])
def test_valid_node_ids(node_id: str) -> None:
    assert validate_node_id(node_id) == node_id


@pytest.mark.parametrize(
    "node_id", ["", "x" * 65, "a b", " a", "a\t", "a,b", "a=b", "a\x07", "a\u200b", "nœud"]
)
def test_invalid_node_ids(node_id: str) -> None:
    with pytest.raises(ConfigError, match="node id"):
        validate_node_id(node_id)


# --- parse_peers ----------------------------------------------------------------------


def test_parse_peers_seed_form() -> None:
    assert parse_peers("node2=127.0.0.1:50052,node3=127.0.0.1:50053", self_id="node1") == (
        Peer("node2", HostPort("127.0.0.1", 50052)),
        Peer("node3", HostPort("127.0.0.1", 50053)),
    )


def test_parse_peers_keeps_the_given_order() -> None:
    peers = parse_peers("c=h:3,a=h:1,b=h:2", self_id="me")
    assert [peer.node_id for peer in peers] == ["c", "a", "b"]


def test_parse_peers_bare_address_is_its_own_id() -> None:
    assert parse_peers("127.0.0.1:50052,10.0.0.3:1", self_id="node1") == (
        Peer("127.0.0.1:50052", HostPort("127.0.0.1", 50052)),
        Peer("10.0.0.3:1", HostPort("10.0.0.3", 1)),
    )


def test_parse_peers_bare_ipv6_address() -> None:
    assert parse_peers("[::1]:50052", self_id="node1") == (
        Peer("[::1]:50052", HostPort("::1", 50052)),
    )


def test_parse_peers_ipv6_with_id() -> None:
    assert parse_peers("n2=[::1]:50052", self_id="node1") == (Peer("n2", HostPort("::1", 50052)),)


def test_parse_peers_mixed_forms() -> None:
    assert parse_peers("n2=h2:2,h3:3", self_id="n1") == (
        Peer("n2", HostPort("h2", 2)),
        Peer("h3:3", HostPort("h3", 3)),
    )


@pytest.mark.parametrize("text", ["", " ", ",", " , ,, "])
def test_parse_peers_empty(text: str) -> None:
    assert parse_peers(text, self_id="node1") == ()


def test_parse_peers_allows_spaces_around_items_and_trailing_commas() -> None:
    assert parse_peers("  node2=127.0.0.1:50052 , node3=127.0.0.1:50053 ,", self_id="n1") == (
        Peer("node2", HostPort("127.0.0.1", 50052)),
        Peer("node3", HostPort("127.0.0.1", 50053)),
    )


@pytest.mark.parametrize(
    "text",
    ["n2=h:1,n2=h:2", "n2=h:1,n3=h:3,n2=h:1", "h:1,h:1", "h:1=x:5,h:1"],
)
def test_parse_peers_rejects_duplicate_ids(text: str) -> None:
    with pytest.raises(ConfigError, match="named twice"):
        parse_peers(text, self_id="me")


@pytest.mark.parametrize(
    ("text", "self_id"),
    [("node1=h:1", "node1"), ("n2=h:2,node1=h:1", "node1"), ("h:1", "h:1")],
)
def test_parse_peers_rejects_own_id(text: str, self_id: str) -> None:
    with pytest.raises(ConfigError, match="own id"):
        parse_peers(text, self_id=self_id)


@pytest.mark.parametrize(
    "text", ["n2=:50052", "n2=0.0.0.0:50052", "n2=[::]:50052", ":50052", "0.0.0.0:1"]
)
def test_parse_peers_rejects_wildcard_hosts(text: str) -> None:
    with pytest.raises(ConfigError, match="wildcard"):
        parse_peers(text, self_id="node1")


@pytest.mark.parametrize(
    "text",
    ["=h:1", "a b=h:1", "a=b=h:1", f"{'x' * 65}=h:1", "\x07=h:1", "n2=h:1,\x00=h:2"],
)
def test_parse_peers_rejects_invalid_ids(text: str) -> None:
    with pytest.raises(ConfigError, match="node id"):
        parse_peers(text, self_id="node1")


@pytest.mark.parametrize("text", ["n2", "n2=", "n2=host", "n2=h:0", "n2=h:port", "n2=::1:5"])
def test_parse_peers_rejects_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="peer address"):
        parse_peers(text, self_id="node1")


@given(
    ids=st.lists(
        st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), min_size=1, max_size=6, unique=True
    ),
    ports_=st.lists(ports, min_size=6, max_size=6),
)
@PROPERTY
def test_parse_peers_round_trips(ids: list[str], ports_: list[int]) -> None:
    expected = tuple(
        Peer(node_id, HostPort("127.0.0.1", port))
        for node_id, port in zip(ids, ports_, strict=False)
    )
    text = ",".join(f"{peer.node_id}={peer.address}" for peer in expected)
    assert parse_peers(text, self_id="self/not-a-peer") == expected


# --- NodeConfig --------------------------------------------------------------------


def test_default_config() -> None:
    config = NodeConfig()
    assert config.node_id == "node1"
    assert config.listen == HostPort("", 50051)
    assert config.advertise is None
    assert config.peers == ()
    assert config.replicas == 2
    assert config.engine == "lmdb"
    assert config.fsync is FsyncMode.BATCH
    assert config.limits == Limits()
    assert config.limits.max_value_bytes == DEFAULT_MAX_VALUE_BYTES
    assert config.log_format == "text"
    assert config.log_level == "info"
    assert config.shutdown_grace_s == 5.0


def test_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize("replicas", [0, -1])
def test_replicas_below_one_are_rejected(replicas: int) -> None:
    with pytest.raises(ConfigError, match="replicas"):
        NodeConfig(replicas=replicas)


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_replicas_accepted(replicas: int) -> None:
    assert NodeConfig(replicas=replicas).replicas == replicas


@pytest.mark.parametrize("engine", ["lmdb", "memory"])
def test_known_engines(engine: str) -> None:
    assert NodeConfig(engine=engine).engine == engine


@pytest.mark.parametrize("engine", ["", "rocksdb", "LMDB", "mem"])
def test_unknown_engine_is_rejected(engine: str) -> None:
    with pytest.raises(ConfigError, match="engine"):
        NodeConfig(engine=engine)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_formats(log_format: str) -> None:
    assert NodeConfig(log_format=log_format).log_format == log_format


@pytest.mark.parametrize("log_format", ["", "xml", "logfmt"])
def test_bad_log_format_is_rejected(log_format: str) -> None:
    with pytest.raises(ConfigError, match="log format"):
        NodeConfig(log_format=log_format)


@pytest.mark.parametrize("log_level", ["debug", "info", "warning", "error"])
def test_log_levels(log_level: str) -> None:
    assert NodeConfig(log_level=log_level).log_level == log_level


@pytest.mark.parametrize("log_level", ["", "trace", "verbose", "critical"])
def test_bad_log_level_is_rejected(log_level: str) -> None:
    with pytest.raises(ConfigError, match="log level"):
        NodeConfig(log_level=log_level)


@pytest.mark.parametrize("max_value_bytes", [0, -1, (64 << 20) + 1, 1 << 40])
def test_max_value_bytes_out_of_range_is_rejected(max_value_bytes: int) -> None:
    with pytest.raises(ConfigError, match="max value bytes"):
        NodeConfig(limits=Limits(max_value_bytes=max_value_bytes))


@pytest.mark.parametrize("max_value_bytes", [1, 1 << 20, 64 << 20])
def test_max_value_bytes_in_range(max_value_bytes: int) -> None:
    config = NodeConfig(limits=Limits(max_value_bytes=max_value_bytes))
    assert config.limits.max_value_bytes == max_value_bytes


def test_negative_shutdown_grace_is_rejected() -> None:
    with pytest.raises(ConfigError, match="grace"):
        NodeConfig(shutdown_grace_s=-0.5)
    assert NodeConfig(shutdown_grace_s=0.0).shutdown_grace_s == 0.0


@pytest.mark.parametrize("node_id", ["", "a b", "a=b", "x" * 65])
def test_invalid_node_id_is_rejected(node_id: str) -> None:
    with pytest.raises(ConfigError, match="node id"):
        NodeConfig(node_id=node_id)


def test_data_path_defaults_under_data() -> None:
    assert NodeConfig().data_path == Path("data") / "node1"
    assert NodeConfig(node_id="node7").data_path == Path("data") / "node7"


def test_data_path_explicit() -> None:
    assert NodeConfig(data_dir=Path("/var/lib/ringkv")).data_path == Path("/var/lib/ringkv")


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_advertised_defaults_to_loopback_for_a_wildcard_listen(host: str) -> None:
    config = NodeConfig(listen=HostPort(host, 50061))
    assert config.advertised == HostPort("127.0.0.1", 50061)


@pytest.mark.parametrize("host", ["10.1.2.3", "::1", "db1.internal"])
def test_advertised_defaults_to_a_specific_listen_address(host: str) -> None:
    config = NodeConfig(listen=HostPort(host, 50061))
    assert config.advertised == HostPort(host, 50061)


def test_explicit_advertise_wins() -> None:
    config = NodeConfig(listen=HostPort("", 50051), advertise=HostPort("node1.example", 443))
    assert config.advertised == HostPort("node1.example", 443)


@pytest.mark.parametrize(
    ("listen", "bind"),
    [
        (HostPort("", 50051), "0.0.0.0:50051"),
        (HostPort("0.0.0.0", 1), "0.0.0.0:1"),
        (HostPort("::", 50051), "[::]:50051"),
        (HostPort("127.0.0.1", 50051), "127.0.0.1:50051"),
        (HostPort("::1", 50051), "[::1]:50051"),
        (HostPort("localhost", 9), "localhost:9"),
    ],
)
def test_bind_address(listen: HostPort, bind: str) -> None:
    assert NodeConfig(listen=listen).bind_address == bind


def test_bind_address_ignores_advertise() -> None:
    config = NodeConfig(listen=HostPort("", 50051), advertise=HostPort("10.0.0.1", 50051))
    assert config.bind_address == "0.0.0.0:50051"


def test_joining_an_existing_cluster_needs_a_seed() -> None:
    with pytest.raises(ConfigError, match="existing needs -peers"):
        NodeConfig(joins_existing=True)
    seed = (Peer("node2", HostPort("127.0.0.1", 50052)),)
    assert NodeConfig(joins_existing=True, peers=seed).joins_existing
    assert not NodeConfig(peers=seed).joins_existing  # the seed's command lines: new


def test_answer_send_timeout_is_on_by_default_and_zero_turns_it_off() -> None:
    assert NodeConfig().answer_send_timeout_s == 60.0
    assert NodeConfig(answer_send_timeout_s=0).answer_send_timeout_s == 0
    with pytest.raises(ConfigError, match="--answer-send-timeout"):
        NodeConfig(answer_send_timeout_s=-1)
