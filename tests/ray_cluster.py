"""A Ray cluster of several nodes on this machine, each with its own raylet, object store and agents, every
process listening on 127.0.0.1 only; this process owns it (Ray's multi-node test harness,
`ray.cluster_utils.Cluster`) and takes orders on stdin. Run by tests/helpers.py `ray_cluster`, which gives it
its environment: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so that every node takes 127.0.0.1 as its address, and
RAY_TMPDIR=TEMP_DIR, so that the cluster's temp dir, TEMP_DIR/ray, is Ray's default one: `Cluster` writes the
address file there, and a job's supervisor reads it from the head's temp dir to give the job's driver the
cluster's address. Were the two apart, the supervisor would fall back to any GCS process it finds on the machine
(a local `xlc train`, another test's Ray), and the job would run on that cluster.

(`ray start --address` cannot do this: for a node joining a cluster it replaces 127.0.0.1 by the machine's
address, so the node listens on every interface, or with that variable at 0 refuses to start.)

Every node added gets its own runtime-env directory, as a separate machine has its own disk: the nodes share
the head's session directory, and Ray's working_dir plugin unpacks a job's working dir with overwrite (rmtree,
then unzip) the first time a node's agent sees it, so a shared directory would be deleted under the job's
driver, running in it on the head, as soon as a worker starts on another node (its cwd gone: `os.getcwd()`
raises FileNotFoundError).

    RAY_TMPDIR=TEMP_DIR python tests/ray_cluster.py HEAD_CPUS DASHBOARD_PORT AGENT_PORTS
prints one JSON line once the head is up, {"address": GCS host:port, "dashboard": URL, "head": node id},
then answers each line it reads with one JSON line:
    add NAME CPUS AGENT_PORTS  -> {"node_id": ...}   a node with CPUS CPUs and a custom resource NAME (1)
    kill NODE_ID   -> {"killed": NODE_ID} every process of that node SIGKILLed at once, as a lost machine
and ends every node at the end of its input. AGENT_PORTS: four free ports, comma-separated, for the node's
dashboard agent (HTTP, gRPC), runtime-env agent and metrics export. Ray's defaults are fixed ports (52365 ...),
which another Ray on the machine (a local `xlc train`, a parallel test) may hold: the head's job agent would
then never start, and every job submission would be answered "No available agent".
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster

OBJECT_STORE_BYTES = 300_000_000
AGENT_PORTS = ("dashboard_agent_listen_port", "metrics_agent_port", "runtime_env_agent_port", "metrics_export_port")


def _agent_ports(ports: str) -> dict[str, int]:
    values = [int(p) for p in ports.split(",")]
    if len(values) != len(AGENT_PORTS):
        raise ValueError(f"agent ports {ports!r}: expected {len(AGENT_PORTS)} comma-separated ports")
    return dict(zip(AGENT_PORTS, values))


def main(head_cpus: int, dashboard_port: int, agent_ports: str) -> None:
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        num_cpus=head_cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard_port, **_agent_ports(agent_ports)))
    nodes = {}
    try:
        head = cluster.head_node
        print(json.dumps({"address": head.gcs_address, "dashboard": f"http://{head.webui_url}",
                          "head": head.node_id}), flush=True)
        for line in sys.stdin:
            order, *args = line.split()
            if order == "add":
                node = cluster.add_node(num_cpus=int(args[1]), resources={args[0]: 1},
                                        object_store_memory=OBJECT_STORE_BYTES,
                                        runtime_env_dir_name=f"runtime_resources_{args[0]}",
                                        **_agent_ports(args[2]))
                nodes[node.node_id] = node
                print(json.dumps({"node_id": node.node_id}), flush=True)
            elif order == "kill":
                cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                print(json.dumps({"killed": args[0]}), flush=True)
            else:
                raise ValueError(f"unknown order {line.strip()!r}: expected add NAME CPUS AGENT_PORTS or kill NODE_ID")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
