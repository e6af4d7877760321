import os

import pytest

from pmx.config import AppConfig
from pmx.configfile import ConfigFileError, load_config_file, tomllib
from pmx.cpus import usable_cpus
from pmx.errors import PmxError

APP = "examples.fastapi_app.main:app"


def write(tmp_path, text, name="pmx.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path, text):
    return load_config_file(write(tmp_path, text))


def load_error(path):
    with pytest.raises(ConfigFileError) as exc_info:
        load_config_file(path)
    error = exc_info.value
    assert isinstance(error, PmxError)
    assert error.path == path
    assert str(error) == error.message
    assert "\n" not in error.message
    return error.message


# -- happy paths -------------------------------------------------------------------------


def test_two_apps_with_their_fields(tmp_path):
    configs = load(
        tmp_path,
        f"""
[[app]]
name = "api"
app = "{APP}"
workers = 4
bind = "127.0.0.1:8000"
balance = "least-conn"
env = {{ DATABASE_URL = "sqlite:///db.sqlite3" }}
graceful-timeout = 30
log-max-size = "10M"

[[app]]
app = "examples.django_app.mysite.wsgi:application"
bind = "127.0.0.1:8001"
""",
    )
    assert [c.to_dict() for c in configs] == [
        AppConfig(
            app=APP,
            name="api",
            workers=4,
            bind="127.0.0.1:8000",
            balance="least-conn",
            env={"DATABASE_URL": "sqlite:///db.sqlite3"},
            graceful_timeout=30.0,
            log_max_size=10 * 1024 * 1024,
        ).to_dict(),
        AppConfig(
            app="examples.django_app.mysite.wsgi:application",
            name="examples.django_app.mysite.wsgi",
            bind="127.0.0.1:8001",
        ).to_dict(),
    ]
    assert all(isinstance(c, AppConfig) for c in configs)


def test_defaults_filled(tmp_path):
    (config,) = load(tmp_path, f'[[app]]\napp = "{APP}"\n')
    assert config.name == "examples.fastapi_app.main"
    expected = AppConfig(app=APP, name="examples.fastapi_app.main").to_dict()
    assert config.to_dict() == expected
    assert config.workers == 1 and config.bind == "127.0.0.1:8000" and config.app_dir == ""


def test_workers_max(tmp_path):
    (config,) = load(tmp_path, f'[[app]]\napp = "{APP}"\nworkers = "max"\n')
    assert config.workers == usable_cpus()


def test_numbers_as_strings(tmp_path):
    (config,) = load(
        tmp_path,
        f'[[app]]\napp = "{APP}"\nworkers = "3"\nbacklog = "64"\ngraceful-timeout = "2.5"\n'
        "log-max-size = 4096\n",
    )
    assert (config.workers, config.backlog, config.graceful_timeout) == (3, 64, 2.5)
    assert config.log_max_size == 4096


def test_env_table_values_converted(tmp_path):
    (config,) = load(
        tmp_path,
        f"""
[[app]]
app = "{APP}"
env = {{ URL = "sqlite://", WORKERS = 3, RATIO = 0.5, DEBUG = true }}
""",
    )
    assert config.env == {"URL": "sqlite://", "WORKERS": "3", "RATIO": "0.5", "DEBUG": "True"}


def test_env_as_sub_table(tmp_path):
    (config,) = load(tmp_path, f'[[app]]\napp = "{APP}"\n[app.env]\nA = "1"\nB = "two"\n')
    assert config.env == {"A": "1", "B": "two"}


ALL_KEYS = {
    "app-dir": '"."',
    "graceful-timeout": "12.5",
    "max-boot-failures": "7",
    "log-level": '"debug"',
    "access-log": "false",
    "timeout-keep-alive": "9",
    "header-timeout": "2.5",
    "max-header-size": '"16K"',
    "backlog": "128",
    "proxy-headers": "false",
    "forwarded-allow-ips": '"10.0.0.1"',
    "log-max-size": '"2K"',
    "log-backups": "0",
    "interface": '"wsgi"',
    "balance": '"least-conn"',
    "rebalance": '"drain"',
}
ALL_FIELDS = {
    "app_dir": "",  # filled in by the test: the file's directory
    "graceful_timeout": 12.5,
    "max_boot_failures": 7,
    "log_level": "debug",
    "access_log": False,
    "timeout_keep_alive": 9,
    "header_timeout": 2.5,
    "max_header_size": 16384,
    "backlog": 128,
    "proxy_headers": False,
    "forwarded_allow_ips": "10.0.0.1",
    "log_max_size": 2048,
    "log_backups": 0,
    "interface": "wsgi",
    "balance": "least-conn",
    "rebalance": "drain",
}


@pytest.mark.parametrize("spelling", ["dash", "underscore"])
def test_every_key_in_dash_and_underscore_spelling(tmp_path, spelling):
    lines = [f'app = "{APP}"', 'name = "web"', "workers = 2", 'bind = "127.0.0.1:9000"']
    for key, value in ALL_KEYS.items():
        if spelling == "underscore":
            key = key.replace("-", "_")
        lines.append(f"{key} = {value}")
    lines.append('env = { A = "b" }')
    (config,) = load(tmp_path, "[[app]]\n" + "\n".join(lines) + "\n")
    fields = dict(ALL_FIELDS, app_dir=str(tmp_path))
    expected = AppConfig(
        app=APP, name="web", workers=2, bind="127.0.0.1:9000", env={"A": "b"}, **fields
    )
    assert config.to_dict() == expected.to_dict()


@pytest.mark.parametrize(
    ("lines", "bind"),
    [
        ('host = "0.0.0.0"\nport = 9001', "0.0.0.0:9001"),
        ('host = "0.0.0.0"\nport = "9001"', "0.0.0.0:9001"),
        ("port = 9002", "127.0.0.1:9002"),
        ('host = "10.1.2.3"', "10.1.2.3:8000"),
        ('host = "::1"\nport = 9003', "[::1]:9003"),
    ],
)
def test_host_and_port_make_the_bind(tmp_path, lines, bind):
    (config,) = load(tmp_path, f'[[app]]\napp = "{APP}"\n{lines}\n')
    assert config.bind == bind


def test_relative_app_dir_is_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "conf" / "src").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path / "conf", f'[[app]]\napp = "{APP}"\napp-dir = "src"\n')
    (config,) = load_config_file(path)
    assert config.app_dir == str(tmp_path / "conf" / "src")
    assert os.path.isabs(config.app_dir)


def test_relative_config_path_and_dot_app_dir(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "conf", f'[[app]]\napp = "{APP}"\napp-dir = "."\n')
    (config,) = load_config_file(os.path.join("conf", "pmx.toml"))
    assert config.app_dir == str(tmp_path / "conf")


def test_absolute_app_dir_kept(tmp_path):
    target = tmp_path / "abs"
    target.mkdir()
    (tmp_path / "conf").mkdir()
    (config,) = load(tmp_path / "conf", f'[[app]]\napp = "{APP}"\napp-dir = "{target}"\n')
    assert config.app_dir == str(target)


def test_relative_unix_bind_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    (config,) = load(tmp_path, f'[[app]]\napp = "{APP}"\nbind = "unix:run/api.sock"\n')
    assert config.bind == f"unix:{tmp_path}/run/api.sock"


def test_apps_on_port_zero_do_not_clash(tmp_path):
    configs = load(
        tmp_path,
        f'[[app]]\nname = "a"\napp = "{APP}"\nbind = "127.0.0.1:0"\n'
        f'[[app]]\nname = "b"\napp = "{APP}"\nbind = "127.0.0.1:0"\n',
    )
    assert [(c.name, c.bind) for c in configs] == [("a", "127.0.0.1:0"), ("b", "127.0.0.1:0")]


def test_inline_array_of_app_tables(tmp_path):
    configs = load(tmp_path, f'app = [{{ app = "{APP}" }}, {{ app = "x:y", port = 9 }}]\n')
    assert [(c.name, c.bind) for c in configs] == [
        ("examples.fastapi_app.main", "127.0.0.1:8000"),
        ("x", "127.0.0.1:9"),
    ]


# -- errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert load_error(path) == f"cannot read config file '{path}': no such file."


def test_directory_instead_of_file(tmp_path):
    path = str(tmp_path)
    assert load_error(path) == f"cannot read config file '{path}': it is a directory."


@pytest.mark.parametrize("text", ["[[app]\n", "workers = \n", "a = 1\na = 2\n"])
def test_invalid_toml(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as toml_error:
        tomllib.loads(text)
    assert "(at line " in str(toml_error.value)
    assert load_error(path) == f"config file '{path}' is not valid TOML: {toml_error.value}."


def test_not_utf8(tmp_path):
    path = tmp_path / "pmx.toml"
    path.write_bytes(b'[[app]]\napp = "caf\xe9:app"\n')
    assert load_error(str(path)) == (
        f"config file '{path}' is not valid TOML: it is not UTF-8 text (line 2)."
    )


A = f'app = "{APP}"'  # a valid app line

ERRORS = [
    # the file as a whole
    ("", "config file '{path}' has no [[app]] tables."),
    ("# nothing here\n", "config file '{path}' has no [[app]] tables."),
    ("app = []\n", "config file '{path}' has no [[app]] tables."),
    (
        f"[[apps]]\n{A}\n",
        "config file '{path}': unknown top-level key 'apps'; expected [[app]] tables.",
    ),
    (
        f"workers = 4\n[[app]]\n{A}\n",
        "config file '{path}': unknown top-level key 'workers'; expected [[app]] tables.",
    ),
    (
        f'app = "{APP}"\n',
        "config file '{path}': top-level key 'app' = \"" + APP + '" is not valid: '
        "expected [[app]] tables.",
    ),
    (
        f"[app]\n{A}\n",
        "config file '{path}': top-level key 'app' = { app = \"" + APP + '" } is not valid: '
        "expected [[app]] tables.",
    ),
    # unknown and repeated keys
    (
        f'[[app]]\nname = "api"\n{A}\nwokers = 4\n',
        "config file '{path}': app 'api': unknown key 'wokers'. Did you mean 'workers'?",
    ),
    (
        f"[[app]]\n{A}\ngraceful_timout = 4\n",
        "config file '{path}': app #1: unknown key 'graceful_timout'. "
        "Did you mean 'graceful_timeout'?",
    ),
    (
        f'[[app]]\n{A}\ncolour = "blue"\n',
        "config file '{path}': app #1: unknown key 'colour'.",
    ),
    (
        f'[[app]]\n{A}\napp-dir = "a"\napp_dir = "b"\n',
        "config file '{path}': app #1: key 'app-dir' is given twice, as 'app-dir' and 'app_dir'.",
    ),
    # missing app
    (
        f'[[app]]\n{A}\n[[app]]\nbind = "127.0.0.1:8001"\n',
        "config file '{path}': app #2: missing key 'app' (the import string, module:attribute).",
    ),
    (
        '[[app]]\nname = "web"\n',
        "config file '{path}': app 'web': missing key 'app' (the import string, module:attribute).",
    ),
    # bad values, as reported by AppConfig.validate
    (
        f'[[app]]\nname = "api"\n{A}\nworkers = 0\n',
        "config file '{path}': app 'api': key 'workers': "
        "'0' is not a valid worker count: expected a whole number >= 1 or 'max'.",
    ),
    (
        f'[[app]]\nname = "api"\n{A}\nworkers = "lots"\n',
        "config file '{path}': app 'api': key 'workers': "
        "'lots' is not a valid worker count: expected a whole number >= 1 or 'max'.",
    ),
    (
        f'[[app]]\n{A}\nbind = "nowhere"\n',
        "config file '{path}': app #1: key 'bind': "
        "'nowhere' is not a valid bind address: expected HOST:PORT or unix:PATH.",
    ),
    (
        f'[[app]]\n{A}\nbalance = "random"\n',
        "config file '{path}': app #1: key 'balance': "
        "'random' is not one of 'auto', 'round-robin', 'least-conn', 'least-busy', 'packed'.",
    ),
    (
        f'[[app]]\n{A}\ninterface = "cgi"\n',
        "config file '{path}': app #1: key 'interface': "
        "'cgi' is not one of 'auto', 'asgi', 'wsgi'.",
    ),
    (
        f'[[app]]\n{A}\nlog-level = "loud"\n',
        "config file '{path}': app #1: key 'log-level': 'loud' is not one of "
        "'critical', 'error', 'warning', 'info', 'debug', 'trace'.",
    ),
    (
        f'[[app]]\n{A}\nlog_level = "loud"\n',
        "config file '{path}': app #1: key 'log_level': 'loud' is not one of "
        "'critical', 'error', 'warning', 'info', 'debug', 'trace'.",
    ),
    (
        f"[[app]]\n{A}\ngraceful-timeout = -1\n",
        "config file '{path}': app #1: key 'graceful-timeout': "
        "'-1' is not a valid duration: expected seconds >= 0.",
    ),
    (
        f'[[app]]\n{A}\ngraceful_timeout = "soon"\n',
        "config file '{path}': app #1: key 'graceful_timeout': "
        "'soon' is not a valid duration: expected seconds >= 0.",
    ),
    (
        f"[[app]]\n{A}\nmax-boot-failures = 0\n",
        "config file '{path}': app #1: key 'max-boot-failures': "
        "'0' is not valid: expected a whole number >= 1.",
    ),
    (
        f"[[app]]\n{A}\ntimeout-keep-alive = 1.5\n",
        "config file '{path}': app #1: key 'timeout-keep-alive': "
        "'1.5' is not valid: expected a whole number >= 1.",
    ),
    (
        f"[[app]]\n{A}\nbacklog = -5\n",
        "config file '{path}': app #1: key 'backlog': "
        "'-5' is not valid: expected a whole number >= 1.",
    ),
    (
        f'[[app]]\n{A}\nlog-max-size = "10X"\n',
        "config file '{path}': app #1: key 'log-max-size': "
        "'10X' is not a valid size: expected bytes or a number with K, M or G.",
    ),
    (
        f"[[app]]\n{A}\nlog-backups = -1\n",
        "config file '{path}': app #1: key 'log-backups': "
        "'-1' is not valid: expected a whole number >= 0.",
    ),
    (
        f'[[app]]\nname = "my app"\n{A}\n',
        "config file '{path}': app 'my app': key 'name': "
        "'my app' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
    ),
    (
        '[[app]]\nname = "api"\napp = "main"\n',
        "config file '{path}': app 'api': key 'app': "
        'Import string "main" must be in format "<module>:<attribute>".',
    ),
    (
        f'[[app]]\n{A}\napp-dir = "missing"\n',
        "config file '{path}': app #1: key 'app-dir': '{dir}/missing' is not a directory.",
    ),
    (
        f'[[app]]\n{A}\nenv = {{ "BAD KEY" = "1" }}\n',
        "config file '{path}': app #1: key 'env': "
        "'BAD KEY' is not a valid environment variable name.",
    ),
    (
        '[[app]]\napp = "-bad:app"\n',
        "config file '{path}': app #1: key 'name': "
        "'-bad' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
    ),
    (
        f'[[app]]\nname = "a\\nb"\n{A}\n',
        "config file '{path}': app 'a\\nb': key 'name': "
        "'a\\nb' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
    ),
    # wrong TOML types
    (
        f'[[app]]\nname = "api"\n{A}\nbind = [1, 2]\n',
        "config file '{path}': app 'api': key 'bind': [1, 2] is not valid: expected a string.",
    ),
    (
        f"[[app]]\n{A}\nbind = 8000\n",
        "config file '{path}': app #1: key 'bind': 8000 is not valid: expected a string.",
    ),
    (
        "[[app]]\napp = 5\n",
        "config file '{path}': app #1: key 'app': 5 is not valid: expected a string.",
    ),
    (
        f"[[app]]\nname = 5\n{A}\n",
        "config file '{path}': app #1: key 'name': 5 is not valid: expected a string.",
    ),
    (
        f"[[app]]\n{A}\nworkers = true\n",
        "config file '{path}': app #1: key 'workers': true is not valid: "
        'expected a whole number or "max".',
    ),
    (
        f"[[app]]\n{A}\nworkers = [4]\n",
        "config file '{path}': app #1: key 'workers': [4] is not valid: "
        'expected a whole number or "max".',
    ),
    (
        f"[[app]]\n{A}\ngraceful-timeout = {{ s = 3 }}\n",
        "config file '{path}': app #1: key 'graceful-timeout': { s = 3 } is not valid: "
        "expected a number of seconds.",
    ),
    (
        f"[[app]]\n{A}\nlog-max-size = [10]\n",
        "config file '{path}': app #1: key 'log-max-size': [10] is not valid: "
        'expected a number of bytes or a size like "10M".',
    ),
    (
        f"[[app]]\n{A}\nbacklog = 2024-01-01\n",
        "config file '{path}': app #1: key 'backlog': 2024-01-01 is not valid: "
        "expected a whole number.",
    ),
    (
        f'[[app]]\n{A}\naccess-log = "yes"\n',
        "config file '{path}': app #1: key 'access-log': \"yes\" is not valid: "
        "expected true or false.",
    ),
    (
        f"[[app]]\n{A}\nproxy_headers = 1\n",
        "config file '{path}': app #1: key 'proxy_headers': 1 is not valid: "
        "expected true or false.",
    ),
    (
        f'[[app]]\n{A}\nenv = "A=1"\n',
        "config file '{path}': app #1: key 'env': \"A=1\" is not valid: "
        'expected a table, e.g. env = { KEY = "value" }.',
    ),
    (
        f'[[app]]\n{A}\nenv = ["A=1"]\n',
        "config file '{path}': app #1: key 'env': [\"A=1\"] is not valid: "
        'expected a table, e.g. env = { KEY = "value" }.',
    ),
    (
        f"[[app]]\n{A}\nenv = {{ A = [1] }}\n",
        "config file '{path}': app #1: key 'env.A': [1] is not valid: "
        "expected a string, a number or a boolean.",
    ),
    (
        f'[[app]]\n{A}\nenv = {{ A = {{ B = "c" }} }}\n',
        "config file '{path}': app #1: key 'env.A': { B = \"c\" } is not valid: "
        "expected a string, a number or a boolean.",
    ),
    (
        f"[[app]]\n{A}\nport = [80]\n",
        "config file '{path}': app #1: key 'port': [80] is not valid: expected a port number.",
    ),
    # host and port
    (
        f'[[app]]\nname = "api"\n{A}\nbind = "127.0.0.1:8000"\nport = 9000\n',
        "config file '{path}': app 'api': use either 'bind' or 'port', not both.",
    ),
    (
        f'[[app]]\n{A}\nbind = "127.0.0.1:8000"\nhost = "0.0.0.0"\nport = 9000\n',
        "config file '{path}': app #1: use either 'bind' or 'host'/'port', not both.",
    ),
    (
        f"[[app]]\n{A}\nport = 70000\n",
        "config file '{path}': app #1: key 'port': "
        "'70000' is not a valid port: expected a whole number from 0 to 65535.",
    ),
    (
        f'[[app]]\n{A}\nport = "http"\n',
        "config file '{path}': app #1: key 'port': "
        "'http' is not a valid port: expected a whole number from 0 to 65535.",
    ),
    (
        f'[[app]]\n{A}\nhost = "unix:/tmp/a.sock"\n',
        "config file '{path}': app #1: key 'host': 'unix:/tmp/a.sock' is not a valid host: "
        'expected a host name or IP address (use bind = "unix:PATH" for a unix socket).',
    ),
    (
        f'[[app]]\n{A}\nhost = "[::1"\nport = 80\n',
        "config file '{path}': app #1: key 'host': "
        "'[::1:80' is not a valid bind address: expected HOST:PORT or unix:PATH.",
    ),
    # between apps
    (
        f'[[app]]\nname = "api"\n{A}\nport = 1\n[[app]]\nname = "api"\n{A}\nport = 2\n',
        "config file '{path}': app name 'api' is used twice.",
    ),
    (
        f"[[app]]\n{A}\nport = 1\n[[app]]\n{A}\nport = 2\n",
        "config file '{path}': app name 'examples.fastapi_app.main' is used twice.",
    ),
    (
        f'[[app]]\nname = "a"\n{A}\n[[app]]\nname = "b"\n{A}\n',
        "config file '{path}': apps 'a' and 'b' both bind 127.0.0.1:8000.",
    ),
    (
        f'[[app]]\nname = "a"\n{A}\nbind = ":9000"\n'
        f'[[app]]\nname = "b"\n{A}\nbind = "127.0.0.1:9001"\n'
        f'[[app]]\nname = "c"\n{A}\nhost = "0.0.0.0"\nport = 9000\n',
        "config file '{path}': apps 'a' and 'c' both bind 0.0.0.0:9000.",
    ),
    (
        f'[[app]]\nname = "a"\n{A}\nbind = "unix:s.sock"\n'
        f'[[app]]\nname = "b"\n{A}\nbind = "unix:{{dir}}/s.sock"\n',
        "config file '{path}': apps 'a' and 'b' both bind unix:{dir}/s.sock.",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors(tmp_path, text, message):
    path = write(tmp_path, text.replace("{dir}", str(tmp_path)))
    expected = message.replace("{path}", path).replace("{dir}", str(tmp_path))
    assert load_error(path) == expected


def test_error_names_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[[app]]\nworkers = 2\n", name="apps.toml")
    assert load_error("apps.toml") == (
        "config file 'apps.toml': app #1: missing key 'app' (the import string, module:attribute)."
    )


def test_every_setting_has_a_config_file_key_and_a_cli_option():
    """Keys and options are made from AppConfig's fields: none is left out."""
    import dataclasses

    from pmx.cli.apps import start
    from pmx.cli.options import PARAM_HINTS
    from pmx.config import AppConfig
    from pmx.configfile import _KEYS

    fields = {f.name for f in dataclasses.fields(AppConfig)}
    assert fields == {k.name for k in _KEYS.values() if k.stored}
    assert fields == set(PARAM_HINTS)
    assert fields - {"app"} <= {p.name for p in start.params}
