"""Who may register or disconnect which node: the pure checks behind /connect_worker and
/disconnect_worker (core.orchestrator.registration)."""

from __future__ import annotations

import pytest

from lattice.core.orchestrator.registration import (
    ClusterNode,
    check_disconnect,
    check_register,
    cluster_members,
    same_host,
)
from lattice.exceptions import ForbiddenError, LatticeUsageError, NodeNotFoundError

HEAD = "head-node"
MEMBERS = {
    HEAD: ClusterNode(HEAD, "10.0.0.1"),
    "gpu-node": ClusterNode("gpu-node", "10.0.0.2"),
}
OWN = frozenset({"10.0.0.1", "127.0.0.1"})


def register(node_id: str, node_ip: str, peer: str | None) -> None:
    check_register(
        node_id, node_ip, peer=peer, head_node_id=HEAD, members=MEMBERS, own_addresses=OWN
    )


def test_cluster_members_are_the_alive_nodes() -> None:
    nodes = [
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.5"},
        {"NodeID": "b", "Alive": False, "NodeManagerAddress": "10.0.0.6"},
    ]

    assert cluster_members(nodes) == {"a": ClusterNode("a", "10.0.0.5")}


def test_a_node_registers_itself_from_its_own_address() -> None:
    register("gpu-node", "10.0.0.2", "10.0.0.2")
    register("gpu-node", "10.0.0.2", None)  # in-process: the head itself


@pytest.mark.parametrize(
    ("node_id", "node_ip", "peer", "error", "says"),
    [
        (HEAD, "10.0.0.1", "10.0.0.1", ForbiddenError, "this head's own node"),
        (HEAD, "10.0.0.1", None, ForbiddenError, "this head's own node"),
        ("node-xxx", "192.168.1.100", "192.168.1.100", NodeNotFoundError, "not an alive node"),
        ("gpu-node", "10.0.0.9", "10.0.0.9", ForbiddenError, "not the address of node gpu-node"),
        ("gpu-node", "10.0.0.2", "10.0.0.3", ForbiddenError, "from its own address 10.0.0.2"),
        ("gpu-node", "10.0.0.2", "127.0.0.1", ForbiddenError, "from its own address"),
    ],
)
def test_registration_is_refused(
    node_id: str, node_ip: str, peer: str | None, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        register(node_id, node_ip, peer)


def test_a_head_without_a_cluster_takes_no_workers() -> None:
    with pytest.raises(LatticeUsageError, match="takes no workers"):
        check_register(
            "w", "10.0.0.2", peer="10.0.0.2", head_node_id="local", members=None, own_addresses=OWN
        )


def test_loopback_counts_as_the_head_machine_only() -> None:
    assert same_host("127.0.0.1", "10.0.0.1", OWN)
    assert same_host("::1", "127.0.0.1", OWN)
    assert not same_host("127.0.0.1", "10.0.0.2", OWN)
    assert not same_host("10.0.0.3", "10.0.0.2", OWN)


def disconnect(node_id: str, address: str | None, *, connected: bool, peer: str | None) -> None:
    check_disconnect(
        node_id,
        peer=peer,
        head_node_id=HEAD,
        node_address=address,
        connected=connected,
        own_addresses=OWN,
    )


def test_disconnect_rules() -> None:
    disconnect("gpu-node", "10.0.0.2", connected=True, peer="10.0.0.2")
    with pytest.raises(ForbiddenError, match="cannot be disconnected"):
        disconnect(HEAD, "10.0.0.1", connected=True, peer=None)
    with pytest.raises(NodeNotFoundError, match="not connected"):
        disconnect("node-xxx", None, connected=False, peer="10.0.0.5")
    with pytest.raises(NodeNotFoundError, match="not connected"):
        disconnect("gpu-node", "10.0.0.2", connected=False, peer="10.0.0.2")
    with pytest.raises(ForbiddenError, match="from its own address"):
        disconnect("gpu-node", "10.0.0.2", connected=True, peer="10.0.0.3")
