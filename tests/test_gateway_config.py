"""gateway/config.py: the example loads and is complete; every error names file, key and why."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from gateway import config
from gateway.config import ConfigError, load_config


def write(tmp_path, text, name="gateway.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


TOKEN = 'token = "0123456789abcdef0123"'


def test_the_example_loads_and_mentions_every_key(tmp_path):
    text = config.example_config()
    cfg = load_config(write(tmp_path, text))
    assert cfg.api.enabled and cfg.api.host == "127.0.0.1" and cfg.api.token is not None
    assert cfg.gateway.database == tmp_path / "gateway.db"  # relative to the file
    assert cfg.serial == () and not cfg.semtech.enabled
    for section in (
        config.GatewaySection,
        config.LogSection,
        config.QueueSection,
        config.PipelineSection,
        config.DownlinksSection,
        config.ApiSection,
        config.UpstreamSection,
        config.SemtechSection,
        config.SerialPortSection,
        config.BleSection,
    ):
        for f in dataclasses.fields(section):
            assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f.name
    # uncommenting the [[serial]] example gives a valid port
    lines, block = [], False
    for line in text.splitlines():
        block = (block and line != "") or line == "# [[serial]]"
        lines.append(line[2:] if block else line)
    uncommented = "\n".join(lines)
    assert load_config(write(tmp_path, uncommented, "g2.toml")).serial[0].port == "/dev/ttyUSB0"


def test_each_example_has_its_own_token():
    a, b = (tomllib.loads(config.example_config())["api"]["token"] for _ in range(2))
    assert a != b and len(a) >= config.TOKEN_MIN_LEN


def test_defaults_with_only_a_token(tmp_path):
    cfg = load_config(write(tmp_path, f"[api]\n{TOKEN}\n"))
    assert cfg.queue.max_records == 1_000_000 and cfg.upstream.format == "native"
    assert cfg.upstream.native_version == 3  # columnar: gateway/FORMATS.md
    assert cfg.gateway.registry == tmp_path / "nodes.toml"  # defaults are relative to the file as well
    assert cfg.gateway.id  # the host name
    assert "0123456789abcdef0123" not in repr(cfg) and cfg.api.token.reveal() == "0123456789abcdef0123"


@pytest.mark.parametrize(
    "text, where, why",
    [
        ("[api]\nport = 70000\n" + TOKEN, "api.port", "not a port number"),
        ('[api]\nport = "80"\n' + TOKEN, "api.port", "must be an integer"),
        ("[api]\nprot = 80\n" + TOKEN, "api.prot", "did you mean 'port'"),
        ("[apii]\n", "[apii]", "did you mean [api]"),
        ("[api]\nenabled = true\n", "api.token", "required when the API is enabled"),
        ('[api]\ntoken = "short"\n', "api.token", "shorter than 16"),
        ("[api]\n" + TOKEN + '\ntoken_file = "t"\n', "api", "not both"),
        ("[api]\n" + TOKEN + '\n[log]\nlevel = "loud"\n', "log.level", "'loud' is not one of"),
        ("[api]\n" + TOKEN + "\n[queue]\nmax_records = 0\n", "queue.max_records", "must be positive"),
        ("[api]\n" + TOKEN + '\n[upstream]\nurl = "ftp://x"\n', "upstream.url", "http://"),
        ("[api]\n" + TOKEN + "\n[upstream]\nnative_version = 1\n", "upstream.native_version", "outside 2..3"),
        ("[api]\n" + TOKEN + "\n[upstream]\nbatch_max_age_s = nan\n", "upstream.batch_max_age_s", "finite"),
        ("[api]\n" + TOKEN + "\n[upstream]\nbackoff_initial_s = 500.0\n", "upstream.backoff_initial_s", "larger"),
        ("[api]\n" + TOKEN + "\n[[serial]]\nbaudrate = 9600\n", "serial[0].port", "required"),
        (
            "[api]\n" + TOKEN + '\n[[serial]]\nport = "/dev/a"\n[[serial]]\nport = "/dev/a"\n',
            "serial[1].port",
            "listed twice",
        ),
        ("serial = 1\n[api]\n" + TOKEN, "serial", "array of tables"),
        ("[api]\n" + TOKEN + "\n[downlinks]\ncollect_s = 2.0\n", "downlinks.collect_s", "outside"),
        ("[api]\n" + TOKEN + '\n[gateway]\ndatabase = ""\n', "gateway.database", "must be a path"),
        ("[api\n", "", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_why(tmp_path, text, where, why):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and where in msg and why in msg, msg


def test_token_file_must_be_private(tmp_path):
    tok = tmp_path / "api.token"
    tok.write_text("s3cret-token-of-enough-length\n")
    tok.chmod(0o644)
    p = write(tmp_path, '[api]\ntoken_file = "api.token"\n')
    with pytest.raises(ConfigError, match=r"api.token_file: .*mode 0644.*chmod 600"):
        load_config(p)
    tok.chmod(0o600)
    assert load_config(p).api.token.reveal() == "s3cret-token-of-enough-length"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write(tmp_path, '[api]\ntoken_file = "nope"\n', "g2.toml"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_secret_never_prints():
    s = config.Secret("0123456789abcdef")
    assert "0123" not in repr(s) and "0123" not in str(s) and f"{s}" == "Secret(<hidden>)"
    assert s == config.Secret("0123456789abcdef") and s != config.Secret("x" * 16)
