"""A config file given to ``pmx run`` and ``pmx start``, and the options given with it:
they override the file's values."""

from __future__ import annotations

import json
import socket

import pytest

from pmx.config import AppConfig
from pmx.configfile import load_config_file
from pmx.errors import ConfigError
from tests.conftest import ROOT, free_port, get, ready_pids
from tests.test_cli_errors import pmx_run_to_exit

PLAIN = "tests.apps.plain:app"


def app_table(name: str, port: int, **keys: str) -> str:
    lines = [f'name = "{name}"', f'app = "{PLAIN}"', f'bind = "127.0.0.1:{port}"',
             f'app-dir = "{ROOT}"', *(f"{k} = {v}" for k, v in keys.items())]
    return "[[app]]\n" + "\n".join(lines) + "\n"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the loader's defaults and overrides --------------------------------------------------


def load(tmp_path, text, defaults=None, overrides=None):
    path = tmp_path / "pmx.toml"
    path.write_text(text)
    return load_config_file(str(path), defaults, overrides)


def test_overrides_replace_the_files_values(tmp_path):
    (config,) = load(tmp_path, app_table("api", 9001, workers="3", backlog="64"),
                     overrides={"workers": "2", "access_log": False})
    assert (config.workers, config.access_log, config.backlog) == (2, False, 64)


def test_env_given_is_merged_into_the_files_table(tmp_path):
    (config,) = load(tmp_path, app_table("api", 9001, env='{ A = "file", B = "file" }'),
                     overrides={"env": {"B": "cli", "C": "cli"}})
    assert config.env == {"A": "file", "B": "cli", "C": "cli"}


@pytest.mark.parametrize(
    ("file_address", "overrides", "bind"),
    [
        ('bind = "0.0.0.0:9001"', {"port": "9002"}, "0.0.0.0:9002"),
        ('bind = "[::1]:9001"', {"port": "9002"}, "[::1]:9002"),
        ('host = "0.0.0.0"\nport = 9001', {"host": "10.0.0.1"}, "10.0.0.1:9001"),
        ('bind = "unix:app.sock"', {"port": "9002"}, "127.0.0.1:9002"),
        ("", {"host": "0.0.0.0"}, "0.0.0.0:8000"),
        ('port = 9001', {"bind": "unix:/tmp/x.sock"}, "unix:/tmp/x.sock"),
    ],
)
def test_host_and_port_given_replace_that_part_of_the_address(tmp_path, file_address,
                                                              overrides, bind):
    (config,) = load(tmp_path, f'[[app]]\napp = "{PLAIN}"\n{file_address}\n',
                     overrides=overrides)
    assert config.bind == bind


def test_defaults_apply_only_where_the_file_says_nothing(tmp_path):
    defaults = {"admin": "127.0.0.1:0"}
    text = (f'[[app]]\nname = "a"\napp = "{PLAIN}"\nport = 1\n'
            f'[[app]]\nname = "b"\napp = "{PLAIN}"\nport = 2\nadmin = ""\n'
            f'[[app]]\nname = "c"\napp = "{PLAIN}"\nport = 3\nadmin = "127.0.0.1:9100"\n')
    configs = load(tmp_path, text, defaults=defaults)
    assert [c.admin for c in configs] == ["127.0.0.1:0", "", "127.0.0.1:9100"]


def test_watch_given_is_relative_to_the_apps_directory(tmp_path):
    (tmp_path / "src").mkdir()
    (config,) = load(tmp_path, f'[[app]]\napp = "{PLAIN}"\n',
                     defaults={"app_dir": str(tmp_path)}, overrides={"watch": ["src", "."]})
    assert config.watch == [str(tmp_path / "src"), str(tmp_path)]


def test_a_bad_value_given_is_the_command_lines_error(tmp_path):
    with pytest.raises(ConfigError) as exc_info:
        load(tmp_path, app_table("api", 9001), overrides={"workers": "0"})
    assert exc_info.value.key == "workers"
    assert exc_info.value.message == (
        "'0' is not a valid worker count: expected a whole number >= 1 or 'max'."
    )


def test_a_name_given_for_several_apps_is_refused(tmp_path):
    path = tmp_path / "pmx.toml"
    path.write_text(app_table("a", 9001) + app_table("b", 9002))
    with pytest.raises(ConfigError) as exc_info:
        load_config_file(str(path), overrides={"name": "web"})
    assert exc_info.value.key == "name"
    assert exc_info.value.message == (
        f"'web' would name each of the 2 apps of config file '{path}': "
        "expected a file with one app."
    )


# -- pmx run FILE -------------------------------------------------------------------------


def test_run_serves_the_app_of_a_config_file_with_the_options_given_over_it(
        pmx_run, tmp_path):
    file_port = free_port()
    config = tmp_path / "pmx.toml"
    config.write_text(app_table("filed", file_port, workers="3",
                                env='{ GREETING = "from the file" }'))
    run = pmx_run(str(config), "-i", "2")  # and --bind 127.0.0.1:PORT, from the fixture
    run.wait_serving(2)
    assert len(run.workers()) == 2  # -i 2 over workers = 3
    assert not listening(file_port)  # --bind over bind
    assert json.loads(get(run.port, "/env")[1])["GREETING"] == "from the file"
    assert "starting filed: 2 worker(s)" in run.log()


def test_run_a_file_without_options_takes_its_values(pmx_run, tmp_path):
    config = tmp_path / "pmx.toml"
    port = free_port()
    config.write_text(app_table("filed", port, workers="2", env='{ GREETING = "hi" }'))
    run = pmx_run(str(config), port=port, bind=f"127.0.0.1:{port}")
    run.wait_serving(2)
    assert len(run.workers()) == 2
    assert json.loads(get(port, "/env")[1])["GREETING"] == "hi"


def test_run_a_file_warns_of_the_keys_only_the_daemon_uses(pmx_run, tmp_path):
    """Log rotation is the daemon's (pmx run writes to stdout and stderr): a file that
    sets it is served all the same, with one warning per key it sets."""
    config = tmp_path / "pmx.toml"
    port = free_port()
    config.write_text(app_table("filed", port, **{"log-max-size": '"1M"'}))
    run = pmx_run(str(config), port=port, bind=f"127.0.0.1:{port}")
    run.wait_serving(1)
    warnings = [line for line in run.log().splitlines() if line.startswith("Warning:")]
    assert warnings == [f"Warning: 'log-max-size' in config file '{config}' is used only when "
                        "the daemon runs the app (pmx start); pmx run ignores it."]


def test_run_refuses_a_file_with_several_apps(tmp_path):
    config = tmp_path / "pmx.toml"
    config.write_text(app_table("a", free_port()) + app_table("b", free_port()))
    code, err = pmx_run_to_exit(str(config))
    assert code == 1
    assert err.strip() == (
        f"Error: config file '{config}' holds 2 apps ('a', 'b'); pmx run runs one: start "
        f"them all with 'pmx start {config}', or give pmx run a file with one [[app]]."
    )


def test_run_refuses_a_file_without_apps(tmp_path):
    config = tmp_path / "pmx.toml"
    config.write_text("# nothing yet\n")
    code, err = pmx_run_to_exit(str(config))
    assert code == 1
    assert err.strip() == f"Error: config file '{config}' has no [[app]] tables."


def test_run_names_the_option_whose_value_is_bad(tmp_path):
    config = tmp_path / "pmx.toml"
    config.write_text(app_table("a", free_port()))
    code, err = pmx_run_to_exit(str(config), "--max-memory", "lots")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "Error: Invalid value for '--max-memory': 'lots' is not a valid size: "
        "expected bytes or a number with K, M or G."
    )


# -- pmx start FILE -----------------------------------------------------------------------


def test_start_puts_the_options_given_over_each_apps_values(pmx, tmp_path):
    file_ports = free_port(), free_port()
    port = free_port()
    config = tmp_path / "pmx.toml"
    config.write_text(app_table("api", file_ports[0], env='{ GREETING = "file" }')
                      + app_table("side", file_ports[1], admin='""'))
    result = pmx("start", str(config), "-i", "2", "--env", "GREETING=cli", "--port", str(port))
    # Both apps now ask for the same port: the file with the options is refused whole.
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: config file '{config}': apps 'api' and 'side' both bind 127.0.0.1:{port}."
    )
    assert pmx.daemon_pid() is None or pmx.status()["apps"] == []

    pmx.ok("start", str(config), "-i", "2", "--env", "GREETING=cli")
    apps = {a["name"]: a for a in pmx.status()["apps"]}
    assert len(ready_pids(apps["api"])) == 2 and len(ready_pids(apps["side"])) == 2
    for file_port in file_ports:
        assert json.loads(get(file_port, "/env")[1])["GREETING"] == "cli"
    described = {name: json.loads(pmx.ok("describe", name, "--json"))["config"]
                 for name in apps}
    assert described["api"]["admin"].startswith("127.0.0.1:")  # pmx start's default
    assert described["side"]["admin"] == ""  # admin = "" in the file: off


def test_start_validates_a_target_as_before(pmx):
    result = pmx("start", PLAIN, "-i", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '-i' / '--workers': '0' is not a valid worker count: "
        "expected a whole number >= 1 or 'max'."
    )


def test_a_target_gets_appconfigs_defaults_for_what_is_not_given():
    from pmx.cli.options import build_config

    config = build_config(PLAIN, {"workers": "3"})
    assert config.to_dict() == AppConfig(app=PLAIN, workers=3).validate().to_dict()
