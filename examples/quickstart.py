"""README quickstart: double 21 on a Lattice head (start one with `lattice start --head`)."""

from __future__ import annotations

import sys

from lattice import LatticeClient, task


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def double(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] * 2}


def main(server_url: str = "http://127.0.0.1:8000") -> int:
    with LatticeClient(server_url) as client:
        workflow = client.create_workflow()
        doubled = workflow.add_task(double, inputs={"x": 21})
        run_id = workflow.run()
        outputs = workflow.get_outputs(run_id, timeout=60)
        print(outputs[doubled]["y"])  # 42
        return 0 if outputs[doubled]["y"] == 42 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
