"""One handler per CLI verb. ``validate`` checks the request against the daemon's state
and raises PmxError with the user-facing message; ``execute`` does the work."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from pmx.config import AppConfig, parse_workers
from pmx.daemon.apps import AppState, ManagedApp
from pmx.errors import BootError, PmxError
from pmx.files import write_private

if TYPE_CHECKING:
    from pmx.daemon.server import Daemon

START_TIMEOUT = 60.0


class Handler:
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> Any:
        return args

    async def execute(self, daemon: Daemon, checked: Any) -> Any:
        raise NotImplementedError


def _names(daemon: Daemon, args: dict[str, Any]) -> list[str]:
    name = str(args.get("name", ""))
    if name == "all":
        return list(daemon.apps)
    if name not in daemon.apps:
        raise PmxError(f"no app named '{name}'; 'pmx status' lists the apps.")
    return [name]


async def _status(daemon: Daemon, names: list[str]) -> dict[str, Any]:
    apps = []
    for name in names:
        status = await daemon.apps[name].status()
        status.pop("_master")
        apps.append(status)
    return {"version": 1, "apps": apps}


async def _start(daemon: Daemon, app: ManagedApp) -> None:
    app.start()
    await app.wait_started(START_TIMEOUT)
    if app.state is AppState.ERRORED or app.error:
        raise BootError(app.error or f"app '{app.config.name}' failed to start.", app.detail)


def _check_free(daemon: Daemon, config: AppConfig) -> None:
    """Raise PmxError if the app's name or address is taken."""
    if config.name in daemon.apps:
        raise PmxError(
            f"an app named '{config.name}' already exists; use "
            f"'pmx restart {config.name}' or choose another --name."
        )
    for other in daemon.apps.values():
        if other.config.bind == config.bind and other.state is not AppState.STOPPED:
            raise PmxError(f"app '{other.config.name}' already listens on {config.bind}.")


class Start(Handler):
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> list[AppConfig]:
        configs = []
        for data in args["configs"]:
            config = AppConfig.from_dict(data).validate()  # ConfigError goes back as one
            _check_free(daemon, config)
            configs.append(config)
        return configs

    async def execute(self, daemon: Daemon, configs: list[AppConfig]) -> dict[str, Any]:
        for config in configs:
            # Again: while an earlier app of this request was starting, another request
            # may have taken the name. No await from here until the app is registered.
            _check_free(daemon, config)
            app = ManagedApp(config, daemon.home)
            try:
                app.start()
            except PmxError:
                app.close_logs()
                raise
            daemon.apps[config.name] = app
            await app.wait_started(START_TIMEOUT)
            if app.state is AppState.ERRORED or app.error:
                raise BootError(app.error or f"app '{config.name}' failed to start.", app.detail)
        return await _status(daemon, [c.name for c in configs])


class Stop(Handler):
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> list[str]:
        return _names(daemon, args)

    async def execute(self, daemon: Daemon, names: list[str]) -> dict[str, Any]:
        for name in names:
            await daemon.apps[name].stop()
        return await _status(daemon, names)


class Restart(Stop):
    async def execute(self, daemon: Daemon, names: list[str]) -> dict[str, Any]:
        for name in names:
            app = daemon.apps[name]
            await app.stop()
            await _start(daemon, app)
        return await _status(daemon, names)


class Delete(Stop):
    async def execute(self, daemon: Daemon, names: list[str]) -> dict[str, Any]:
        for name in names:
            app = daemon.apps.pop(name)
            await app.stop()
            app.close_logs()
        return {"deleted": names}


class Reload(Handler):
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> tuple[list[str], int]:
        names = _names(daemon, args)
        parallel = args.get("parallel", 1)
        if not isinstance(parallel, int) or parallel < 1:
            raise PmxError(f"'{parallel}' is not a valid --parallel: expected a whole number >= 1.")
        for name in names:
            state = daemon.apps[name].state
            if state is not AppState.RUNNING:
                raise PmxError(f"cannot reload '{name}': it is {state.value}.")
        return names, parallel

    async def execute(self, daemon: Daemon, checked: tuple[list[str], int]) -> dict[str, Any]:
        names, parallel = checked
        reloaded = {}
        for name in names:
            app = daemon.apps[name]
            budget = (app.config.ready_timeout + app.config.graceful_timeout) * (
                app.config.workers + 1
            )
            reloaded[name] = await app.ask("reload", timeout=budget, parallel=parallel)
        return {"reloaded": reloaded}


class Status(Handler):
    async def execute(self, daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
        return await _status(daemon, list(daemon.apps))


def _one_name(daemon: Daemon, args: dict[str, Any], verb: str) -> str:
    if args.get("name") == "all":
        raise PmxError(f"{verb} takes one app name, not 'all'.")
    return _names(daemon, args)[0]


class Describe(Handler):
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> str:
        return _one_name(daemon, args, "describe")

    async def execute(self, daemon: Daemon, name: str) -> dict[str, Any]:
        app = daemon.apps[name]
        status = await app.status()
        master = status.pop("_master")
        status["config"] = app.config.to_dict()
        status["logs"] = {
            "out": str(daemon.home.out_log(name)), "err": str(daemon.home.err_log(name)),
        }
        status["history"] = master.get("history", [])
        status["detail"] = app.detail
        return status


class Scale(Handler):
    def validate(self, daemon: Daemon, args: dict[str, Any]) -> tuple[str, int]:
        name = _one_name(daemon, args, "scale")
        return name, parse_workers(args.get("workers"))

    async def execute(self, daemon: Daemon, checked: tuple[str, int]) -> dict[str, Any]:
        name, workers = checked
        app = daemon.apps[name]
        await app.ask("scale", workers=workers)
        app.config.workers = workers
        return await _status(daemon, [name])


class Save(Handler):
    async def execute(self, daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
        running = [
            app.config.to_dict()
            for app in daemon.apps.values()
            if app.state in (AppState.STARTING, AppState.RUNNING)
        ]
        # The dump holds the apps' --env values: 0600, whatever the umask.
        write_private(daemon.home.dump, json.dumps({"version": 1, "apps": running},
                                                   indent=2) + "\n")
        return {"saved": [a["name"] for a in running], "path": str(daemon.home.dump)}


class Resurrect(Handler):
    async def execute(self, daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
        try:
            data = json.loads(daemon.home.dump.read_text())
        except FileNotFoundError:
            raise PmxError(f"nothing to resurrect: {daemon.home.dump} does not exist.") from None
        started, errors = [], []
        for entry in data.get("apps", []):
            if entry.get("name") in daemon.apps:
                continue
            try:
                configs = Start().validate(daemon, {"configs": [entry]})
                await Start().execute(daemon, configs)
                started.append(entry["name"])
            except PmxError as exc:
                errors.append(f"{entry.get('name')}: {exc}")
        if errors:
            raise PmxError("could not resurrect " + "; ".join(errors))
        return await _status(daemon, list(daemon.apps))


class Kill(Handler):
    async def execute(self, daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
        names = list(daemon.apps)
        await daemon.stop_all()
        daemon.stopping.set()
        return {"stopped": names, "pid": os.getpid()}


class Ping(Handler):
    async def execute(self, daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "home": str(daemon.home.root)}


HANDLERS: dict[str, Handler] = {
    "start": Start(),
    "stop": Stop(),
    "restart": Restart(),
    "delete": Delete(),
    "reload": Reload(),
    "status": Status(),
    "describe": Describe(),
    "scale": Scale(),
    "save": Save(),
    "resurrect": Resurrect(),
    "kill": Kill(),
    "ping": Ping(),
}
