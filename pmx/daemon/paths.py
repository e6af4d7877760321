"""Where the daemon keeps its state: ``$PMX_HOME``, default ``~/.pmx``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pmx.files import private_dir


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        root = os.environ.get("PMX_HOME") or os.path.join(os.path.expanduser("~"), ".pmx")
        return cls(Path(root).absolute())

    @property
    def sock(self) -> Path:
        return self.root / "pmx.sock"

    @property
    def pid(self) -> Path:
        return self.root / "pmx.pid"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def dump(self) -> Path:
        return self.root / "dump.json"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.log"

    def out_log(self, name: str) -> Path:
        return self.logs / f"{name}.out.log"

    def err_log(self, name: str) -> Path:
        return self.logs / f"{name}.err.log"

    def create(self) -> None:
        """The directories, private to this user (made so if they already exist)."""
        private_dir(self.root)
        private_dir(self.logs)
