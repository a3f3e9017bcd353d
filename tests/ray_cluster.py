"""A Ray cluster of several nodes on this machine, each with its own raylet, object store and agents, every
process listening on 127.0.0.1 only; this process owns it (Ray's multi-node test harness,
`ray.cluster_utils.Cluster`) and takes orders on stdin. Run by tests/helpers.py `ray_cluster`, which gives it
its environment: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so that every node takes 127.0.0.1 as its address, and
RAY_TMPDIR, so that the cluster's address file stays in its own temp dir.

(`ray start --address` cannot do this: for a node joining a cluster it replaces 127.0.0.1 by the machine's
address, so the node listens on every interface, or with that variable at 0 refuses to start.)

    python tests/ray_cluster.py TEMP_DIR HEAD_CPUS DASHBOARD_PORT
prints one JSON line once the head is up, {"address": GCS host:port, "dashboard": URL, "head": node id},
then answers each line it reads with one JSON line:
    add NAME CPUS  -> {"node_id": ...}   a node with CPUS CPUs and a custom resource NAME (1)
    kill NODE_ID   -> {"killed": NODE_ID} every process of that node SIGKILLed at once, as a lost machine
and ends every node at the end of its input.
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster

OBJECT_STORE_BYTES = 300_000_000


def main(temp_dir: str, head_cpus: int, dashboard_port: int) -> None:
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        num_cpus=head_cpus, object_store_memory=OBJECT_STORE_BYTES, temp_dir=temp_dir, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard_port))
    nodes = {}
    try:
        head = cluster.head_node
        print(json.dumps({"address": head.gcs_address, "dashboard": f"http://{head.webui_url}",
                          "head": head.node_id}), flush=True)
        for line in sys.stdin:
            order, *args = line.split()
            if order == "add":
                node = cluster.add_node(num_cpus=int(args[1]), resources={args[0]: 1},
                                        object_store_memory=OBJECT_STORE_BYTES)
                nodes[node.node_id] = node
                print(json.dumps({"node_id": node.node_id}), flush=True)
            elif order == "kill":
                cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                print(json.dumps({"killed": args[0]}), flush=True)
            else:
                raise ValueError(f"unknown order {line.strip()!r}: expected add NAME CPUS or kill NODE_ID")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
