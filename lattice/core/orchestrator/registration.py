"""Who may register or disconnect which node (spec/002 §5.8-5.9): pure checks, no I/O.

A worker proves that it is a node of the head's Ray cluster: the node id it names must be an
alive node that Ray (which admitted it with the cluster's own credentials) lists, at the
address it gives; and it must ask from that address, so one node cannot register, change or
disconnect another. The head's own node is never registered or disconnected through the API:
every task depends on it. Every refusal is raised before anything is sent to the scheduler,
so a refused request changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import ForbiddenError, LatticeUsageError, NodeNotFoundError


@dataclass(frozen=True)
class ClusterNode:
    """An alive node as the cluster lists it."""

    node_id: str
    address: str


class NotInClusterError(NodeNotFoundError):
    """``/connect_worker`` names a node the head's cluster does not have (alive)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.args = (
            f"node {node_id} is not an alive node of this head's Ray cluster: a worker joins "
            "the cluster first (`lattice start --worker`), then registers with the node id "
            "Ray gave it",
        )


class NotConnectedError(NodeNotFoundError):
    """``/disconnect_worker`` names a node that is unknown or disconnected already."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.args = (f"node {node_id} is not connected (unknown, or disconnected already)",)


def cluster_members(ray_nodes: Iterable[dict[str, Any]]) -> dict[str, ClusterNode]:
    """The alive nodes of ``ray.nodes()``-style records, by id."""
    members = {}
    for info in ray_nodes:
        if info.get("Alive") and info.get("NodeID"):
            node_id = str(info["NodeID"])
            members[node_id] = ClusterNode(node_id, str(info.get("NodeManagerAddress", "")))
    return members


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def same_host(peer: str | None, node_address: str, own_addresses: Collection[str]) -> bool:
    """Whether a request from ``peer`` comes from the host at ``node_address``: the same
    address, or loopback when ``node_address`` is one of the head machine's own. ``peer``
    None (called in-process, not over HTTP) is the head itself."""
    if peer is None or peer == node_address:
        return True
    return _is_loopback(peer) and (node_address in own_addresses or _is_loopback(node_address))


def _refuse_head(node_id: str, head_node_id: str | None, action: str) -> None:
    if node_id == head_node_id:
        raise ForbiddenError(
            f"node {node_id} is this head's own node: it cannot be {action} through the API"
        )


def check_register(
    node_id: str,
    node_ip: str,
    *,
    peer: str | None,
    head_node_id: str | None,
    members: dict[str, ClusterNode] | None,
    own_addresses: Collection[str],
) -> None:
    """Refuse a ``/connect_worker`` that would register anything but the caller's own node.

    ``members`` None: the executor has no cluster (local), so no worker can join.

    Raises:
        ForbiddenError: the head's node, or a node other than the caller's (403).
        NodeNotFoundError: no alive node of the cluster has that id (404).
        LatticeUsageError: this head takes no workers (409).
    """
    _refuse_head(node_id, head_node_id, "registered again")
    if members is None:
        raise LatticeUsageError(
            "this head runs the local executor and takes no workers; start it with "
            "--executor ray --ray-port PORT and join workers with `lattice start --worker`"
        )
    member = members.get(node_id)
    if member is None:
        raise NotInClusterError(node_id)
    if node_ip != member.address:
        raise ForbiddenError(
            f"node_ip {node_ip} is not the address of node {node_id} in the cluster "
            f"({member.address})"
        )
    if not same_host(peer, member.address, own_addresses):
        raise ForbiddenError(
            f"node {node_id} can only be registered from its own address {member.address}, "
            f"not from {peer}"
        )


def check_disconnect(
    node_id: str,
    *,
    peer: str | None,
    head_node_id: str | None,
    node_address: str | None,
    connected: bool,
    own_addresses: Collection[str],
) -> None:
    """Refuse a ``/disconnect_worker`` for the head's node, an unknown node, a node already
    disconnected (``connected`` False), or one that is not the caller's.

    Raises:
        ForbiddenError: the head's node, or another host's node (403).
        NodeNotFoundError: no such node, or it was disconnected already (404).
    """
    _refuse_head(node_id, head_node_id, "disconnected")
    if node_address is None or not connected:
        raise NotConnectedError(node_id)
    if not same_host(peer, node_address, own_addresses):
        raise ForbiddenError(
            f"node {node_id} can only be disconnected from its own address {node_address}, "
            f"not from {peer}"
        )
