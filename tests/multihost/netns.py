"""Separate hosts on one machine: network namespaces joined by a bridge.

:class:`Network` makes a private /24 with a bridge inside a "switch" namespace of its own, and
:meth:`Network.host` makes a namespace per host, each with its own address on it, wired to
the bridge by a veth pair. The test process (the root namespace) gets an address on the same
network (``.254``) to reach the head and to listen for tasks. Nothing is changed outside these
namespaces but that one veth, and no traffic leaves them: the hosts' default route (Ray picks
a node's address by the route to a public one, without sending anything) points at the
bridge's address in the switch namespace, which forwards nothing.

Names carry a tag unique to this process (``lt<tag>...``), so runs side by side do not collide;
:meth:`Network.close` removes everything it made, also after a failure halfway through.
Needs root and iproute2 (``ip``); :func:`unavailable` says why a machine cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

#: seconds any one ``ip`` command may take
IP_TIMEOUT = 30.0


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (CI runs the suite as root)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2) to make network namespaces"
    return None


def ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with its error output if it fails."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=False, timeout=IP_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One namespace on the network: its name (for ``ip netns exec``) and its address."""

    name: str
    address: str

    @property
    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host."""
        return ("ip", "netns", "exec", self.name)


@dataclass
class Network:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    #: the /24 prefix; the second and third octets from the tag keep parallel runs apart
    prefix: str = ""
    hosts: list[Host] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        number = int(self.tag)
        self.prefix = self.prefix or f"10.{215 + number % 20}.{number % 250 + 1}"
        self.switch = f"lt{self.tag}sw"

    @property
    def root_address(self) -> str:
        """The test process's own address on the network."""
        return f"{self.prefix}.254"

    def open(self) -> Network:
        """Make the switch namespace with its bridge, and the test process's link to it."""
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "addr", "add", f"{self.prefix}.1/24", "dev", "br0")
        ip("-n", self.switch, "link", "set", "br0", "up")
        self._wire(None, f"{self.root_address}/24", f"lt{self.tag}r")
        return self

    def host(self, role: str) -> Host:
        """A new namespace ``lt<tag><role>`` with the next address, wired to the bridge."""
        name = f"lt{self.tag}{role}"
        address = f"{self.prefix}.{len(self.hosts) + 2}"
        self._add_namespace(name)
        ip("-n", name, "link", "set", "lo", "up")
        self._wire(name, f"{address}/24", f"lt{self.tag}{role}")
        ip("-n", name, "route", "add", "default", "via", f"{self.prefix}.1")
        host = Host(name, address)
        self.hosts.append(host)
        return host

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def _wire(self, namespace: str | None, cidr: str, link: str) -> None:
        """A veth pair: ``link`` in ``namespace`` (None: this one) with ``cidr``, its peer on
        the bridge."""
        peer = f"{link}p"
        ip("link", "add", link, "type", "veth", "peer", "name", peer)
        self._links.append(link)
        ip("link", "set", peer, "netns", self.switch)
        ip("-n", self.switch, "link", "set", peer, "master", "br0")
        ip("-n", self.switch, "link", "set", peer, "up")
        where: tuple[str, ...] = ()
        if namespace is not None:
            ip("link", "set", link, "netns", namespace)
            where = ("-n", namespace)
        ip(*where, "addr", "add", cidr, "dev", link)
        ip(*where, "link", "set", link, "up")

    def close(self) -> list[str]:
        """Remove every namespace and link made (deleting a namespace deletes its links);
        return what could not be removed."""
        left: list[str] = []
        for namespace in reversed(self._namespaces):
            try:
                ip("netns", "del", namespace)
            except RuntimeError as exc:
                left.append(str(exc))
        for link in self._links:
            # The root namespace's end, if its peer's namespace did not take it along.
            found = subprocess.run(
                ["ip", "link", "show", link], capture_output=True, check=False, timeout=IP_TIMEOUT
            )
            if found.returncode == 0:
                try:
                    ip("link", "del", link)
                except RuntimeError as exc:
                    left.append(str(exc))
        self._namespaces.clear()
        self._links.clear()
        return left
