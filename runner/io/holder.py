"""What a lease file says about its holder, and whether that holder is provably gone.

A pid identifies a process only inside one pid namespace of one boot of one host: a holder in another
container on this host (host networking gives it the same host name) has a pid that means nothing
here, and after a reboot every pid is new. So a lease records the holder's boot id
(/proc/sys/kernel/random/boot_id) and pid namespace (readlink /proc/self/ns/pid), and the pid is
asked only when all three match this process's; any other holder is judged by its heartbeat.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field


def this_machine() -> tuple[str, str]:
    """(boot id, pid namespace) of this process; '' where the system does not say (not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return boot, namespace


@dataclass(frozen=True)
class Holder:
    """What a lease file says about who holds it."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    generation: int = 0
    boot_id: str = ""
    pid_ns: str = ""
    released: bool = False
    sealed: list = field(default_factory=list)  # committed parts when taken: runner.io.catalogue
    next_part: int = 0  # the number its writer starts at (runner.io.catalogue.Catalogue.seal)
    timeout_s: float = 0.0  # the holder's own lease timeout and heartbeat interval (0: not recorded)
    heartbeat_s: float = 0.0

    def live(self, now: float, timeout_s: float) -> bool:
        """Not released, beating within its timeout and not known dead. The timeout is the holder's
        own: a taker started with a shorter one must not evict a holder that beats at its own, slower
        pace; `timeout_s` (the taker's) counts only for a lease that does not record one."""
        limit = self.timeout_s or timeout_s
        return not self.released and now - self.heartbeat <= limit and not self.dead()

    def dead(self) -> bool:
        """Known dead: a process of this very pid namespace (same host, boot and namespace) that no
        longer exists. Any other holder is judged by its heartbeat only: its pid means nothing here."""
        boot, namespace = this_machine()
        same = (self.host, self.boot_id, self.pid_ns) == (socket.gethostname(), boot, namespace)
        if not same or not boot or not namespace or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        try:  # killed but not yet reaped by its parent: a zombie holds nothing
            with open(f"/proc/{self.pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False

    def describe(self, now: float) -> str:
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        beat = f"last heartbeat {now - self.heartbeat:.0f}s ago"
        if self.timeout_s:
            beat += f", lease timeout {self.timeout_s:g}s"
        return f"host {self.host} pid {self.pid}, started {start}, {beat}"
