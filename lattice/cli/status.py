"""``lattice status``: print a head's nodes."""

from __future__ import annotations

from lattice.client.core.client import LatticeClient

MB = 1024 * 1024


def print_status(addr: str, token: str | None) -> int:
    url = addr if addr.startswith(("http://", "https://")) else f"http://{addr}"
    with LatticeClient(url, token=token, timeout=10) as client:
        nodes = client.nodes()
    print(
        f"{'NODE':<40} {'ADDRESS':<16} {'STATE':<9} {'CPU free/total':>15} {'MEM free/total MB':>20}  GPUs (free/total MB)"
    )
    for n in nodes:
        total, avail = n["total"], n["available"]
        gpus = ", ".join(
            f"{gid}:{g['gpu_mem_available']}/{g['gpu_mem_total']}"
            for gid, g in sorted(avail["gpus"].items())
        )
        print(
            f"{n['node_id']:<40} {n['node_ip']:<16} {n['state']:<9} "
            f"{avail['cpu']:>7g}/{total['cpu']:<7g} "
            f"{avail['memory_bytes'] // MB:>9}/{total['memory_bytes'] // MB:<10}  {gpus or '-'}"
        )
    return 0
