"""config.load_config: values, defaults, paths, and the exact error for every kind of mistake."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.config import (
    AuthConfig,
    Config,
    ConfigError,
    DnsConfig,
    LimitsConfig,
    ListenerConfig,
    LogConfig,
    PolicyConfig,
    ProtectionConfig,
    QueueConfig,
    RelayConfig,
    ServerConfig,
    TlsConfig,
    default_config,
    load_config,
)

CONFIGS = Path(__file__).parents[1] / "data" / "configs"
DOCS = Path(__file__).parents[2] / "docs" / "config.md"
BAD = sorted((CONFIGS / "bad").glob("*.toml"))


def _load_text(text: str) -> Config:
    """Load ``text`` from a throw-away mailferry.toml (hypothesis tests cannot use tmp_path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mailferry.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path)


def _error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load_text(text)
    return str(info.value)


# -- bad files: each carries its expected error on its first line -------------------------------


def test_there_are_bad_config_files() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_gives_its_expected_error(path: Path) -> None:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# expect: FILE:"), f"{path.name}: first line must be '# expect: …'"
    expected = first.removeprefix("# expect: ").replace("FILE", str(path), 1)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected
    # The FILE:LINE: prefix is what editors jump to: the line must exist in the file.
    line = int(expected.split(":")[1])
    assert 1 <= line <= len(path.read_bytes().splitlines())


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: cannot read: No such file")):
        load_config(missing)


def test_error_names_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mailferry.toml").write_text("\n\n[limits]\nrecipients = 'ten'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("mailferry.toml"))
    assert str(info.value) == (
        'mailferry.toml:4: limits.recipients: must be a positive integer, got "ten"'
    )


# -- good files ---------------------------------------------------------------------------------


def test_full_file_sets_every_key() -> None:
    path = CONFIGS / "good" / "full.toml"
    config = load_config(path)
    assert config == Config(
        server=ServerConfig(hostname="mx1.example.test", data_dir=path.parent / "state"),
        listeners=(ListenerConfig("127.0.0.2", 25), ListenerConfig("::1", 2525),
                   ListenerConfig("127.0.0.2", 587, "submission"),
                   ListenerConfig("127.0.0.2", 465, "smtps")),
        domains=dataclasses.replace(config.domains, local=("example.test", "example.org")),
        dns=DnsConfig(
            nameservers=(
                ("127.0.0.1", 5353), ("192.0.2.53", 53), ("2001:db8::53", 5300),
                ("2001:db8::54", 53),
            ),
            timeout=2.5,
        ),
        limits=LimitsConfig(10_485_760, 50, 512, 60.0, 120.5, 200, 20, 128),
        policy=PolicyConfig(False, "reject", "accept", sender_must_match_auth=False),
        relay=RelayConfig((
            ipaddress.ip_network("192.0.2.0/24"),
            ipaddress.ip_network("2001:db8::/32"),
            ipaddress.ip_network("198.51.100.7/32"),
        )),
        queue=QueueConfig(0.0, 8),
        protection=ProtectionConfig(
            block_time=900.0, window=300.5, max_auth_failures=5, max_unknown_recipients=0,
            max_relay_attempts=3, max_rsets=40, max_oversize=4, max_connections_per_minute=600,
            max_pregreets=2, greeting_delay=6.0, max_messages_per_user=500,
            max_messages_per_sender=200),
        log=LogConfig(dir=CONFIGS / "logs", flush_interval=0.25),
        tls=TlsConfig(certificate=path.parent / "certs" / "mx.pem",
                      key=Path("/etc/mailferry/mx.key")),
        auth=AuthConfig(on_smtp=True),
        source=path,
    )
    assert config.log_dir == CONFIGS / "logs"


def test_empty_file_gives_the_defaults_with_data_next_to_it() -> None:
    path = CONFIGS / "good" / "minimal.toml"
    config = load_config(path)
    assert config == Config(server=ServerConfig(data_dir=path.parent / "var"), source=path)
    assert config.log_dir == path.parent / "var" / "log"


def test_listener_address_forms() -> None:
    config = load_config(CONFIGS / "good" / "listeners.toml")
    assert [(li.host, li.port, li.kind) for li in config.listeners] == [
        ("0.0.0.0", 25, "smtp"), ("::", 25, "smtp"), ("fe80::1%lo", 2525, "smtp"),
    ]


def test_docs_example_loads_and_documents_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "docs/config.md needs a ```toml example"
    for block in blocks:
        _load_text(block)
    # Every key of every section appears in the docs, as `section.key` or in its section's table.
    for f in dataclasses.fields(Config):
        if f.name in ("source", "listeners"):
            continue
        section = type(getattr(Config(), f.name))
        for key in dataclasses.fields(section):
            assert f"`{f.name}.{key.name}`" in text, f"docs/config.md misses {f.name}.{key.name}"
    assert "`listener.address`" in text and "`listener.kind`" in text


# -- paths --------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "mf.toml").write_text('[server]\ndata_dir = "../srv/mf"\n[log]\ndir = "logs"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/mf.toml"))
    assert config.data_dir == tmp_path / "srv" / "mf"
    assert config.log_dir == etc / "logs"
    assert config.source == etc / "mf.toml"


def test_absolute_paths_stay(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    config = _load_text(f'[server]\ndata_dir = "{target}"\n[log]\ndir = "{target}/log"\n')
    assert config.data_dir == target
    assert config.log_dir == target / "log"


def test_default_config_lives_in_cwd_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = default_config()
    assert config.data_dir == tmp_path / "var"
    assert config.source is None
    assert default_config(tmp_path / "x").data_dir == tmp_path / "x" / "var"


# -- properties ---------------------------------------------------------------------------------

INT_KEYS = ["message_size", "recipients", "sessions", "sessions_per_ip", "backlog"]
TIME_KEYS = ["idle_timeout", "data_timeout"]


@given(
    values=st.fixed_dictionaries({k: st.integers(1, 2**62) for k in INT_KEYS}),
    line_length=st.integers(512, 2**31),
    times=st.fixed_dictionaries(
        {k: st.floats(1e-3, 1e9) | st.integers(1, 10**9) for k in TIME_KEYS}
    ),
)
def test_valid_limits_round_trip(
    values: dict[str, int], line_length: int, times: dict[str, float]
) -> None:
    lines = [f"{k} = {v}" for k, v in values.items()]
    lines += [f"line_length = {line_length}"] + [f"{k} = {v!r}" for k, v in times.items()]
    limits = _load_text("[limits]\n" + "\n".join(lines) + "\n").limits
    assert dataclasses.asdict(limits) == {**values, "line_length": line_length, **times}
    assert all(type(getattr(limits, k)) is float for k in TIME_KEYS)


def _toml(value: object) -> str:
    """A Python value as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # TOML basic string: escape quote, backslash and control characters (DEL included).
        return '"' + "".join(
            f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
            else "\\" + c if c in '"\\' else c
            for c in value
        ) + '"'
    return repr(value)


@given(
    key=st.sampled_from(INT_KEYS),
    bad=st.integers(max_value=0) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=5),
    padding=st.integers(0, 30),
)
def test_a_bad_int_names_key_and_line(key: str, bad: object, padding: int) -> None:
    text = "# padding\n" * padding + f"[limits]\n{key} = {_toml(bad)}\n"
    message = _error_of(text)
    assert message.startswith(f"{tempfile.gettempdir()}/")
    assert re.fullmatch(
        rf".*/mailferry\.toml:{padding + 2}: limits\.{key}: must be a positive integer, got .+",
        message, re.S,
    )


def _address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@given(
    listeners=st.lists(
        st.tuples(st.ip_addresses(), st.integers(1, 65535)),
        min_size=1, max_size=5, unique=True,
    )
)
def test_listener_addresses_round_trip(
    listeners: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    text = "".join(f'[[listener]]\naddress = "{_address(ip, port)}"\n' for ip, port in listeners)
    config = _load_text(text)
    assert [(li.host, li.port) for li in config.listeners] == [
        (str(ip), port) for ip, port in listeners
    ]


@given(servers=st.lists(st.tuples(st.ip_addresses(), st.none() | st.integers(1, 65535)),
                        max_size=4))
def test_nameservers_round_trip(
    servers: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]],
) -> None:
    written = [str(ip) if port is None else _address(ip, port) for ip, port in servers]
    config = _load_text(f"[dns]\nnameservers = {written!r}\n".replace("'", '"'))
    expected = [(str(ip), 53 if port is None else port) for ip, port in servers]
    assert list(config.dns.nameservers) == list(dict.fromkeys(expected))


@given(network=st.ip_addresses().flatmap(
    lambda ip: st.integers(0, ip.max_prefixlen).map(
        lambda n: ipaddress.ip_network(f"{ip}/{n}", strict=False))))
def test_relay_networks_round_trip(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> None:
    config = _load_text(f'[relay]\nnetworks = ["{network}"]\n')
    assert config.relay.networks == (network,)


def test_bool_is_not_a_number_anywhere() -> None:
    for section, key in [("limits", "recipients"), ("limits", "idle_timeout"), ("dns", "timeout"),
                         ("queue", "commit_window_ms"), ("log", "flush_interval")]:
        message = _error_of(f"[{section}]\n{key} = true\n")
        assert message.endswith(f":2: {section}.{key}: must be {message.split('must be ')[1]}")
        assert message.endswith("got true")


def test_defaults_round_trip_through_a_file() -> None:
    """Every dataclass field is a key the loader accepts: write all defaults out, read them back."""
    d = Config()
    sections: dict[str, dict[str, object]] = {
        f.name: dataclasses.asdict(getattr(d, f.name)) for f in dataclasses.fields(Config)
        if f.name not in ("listeners", "source", "relay", "dns")
    }
    sections["log"].pop("dir")  # None: "under data_dir", has no TOML spelling
    sections["relay"] = {"networks": [str(n) for n in d.relay.networks], "fallback": False}
    sections["delivery"].pop("tls_ca_file")  # None: no TOML spelling
    sections["dns"] = {"nameservers": [], "timeout": d.dns.timeout}
    sections["tls"] = {}  # no certificate by default (None has no TOML spelling)
    sections["http"]["address"] = "127.0.0.1:8025"  # a (host, port) tuple in the dataclass

    def value(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return f'"{v}"' if isinstance(v, str | Path) else repr(v)

    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )
    text += '[[listener]]\naddress = "127.0.0.1:2525"\nkind = "smtp"\n'
    loaded = _load_text(text)
    assert loaded.source is not None
    expected = dataclasses.replace(
        d, server=ServerConfig(data_dir=loaded.source.parent.resolve() / "var"),
        source=loaded.source,
    )
    assert loaded == expected


def test_http_section() -> None:
    assert Config().http.address == ("127.0.0.1", 8025) and Config().http.loopback
    off = _load_text('[http]\naddress = ""\n').http
    assert off.address is None
    public = _load_text('[http]\naddress = "[::]:8080"\nadmins = ["Admin@Example.test"]\n'
                        "history_days = 7\n").http
    assert public.address == ("::", 8080) and not public.loopback
    assert public.admins == ("admin@example.test",) and public.history_days == 7
    assert _load_text('[http]\naddress = "[::1]:8025"\n').http.loopback
