"""Deployment throughput: seconds per round of the main job deployed (a SuperLink, its TLS proxy and N SuperNodes on
loopback, with client certificates and SuperNode authentication: `fedsim deploy local`'s setup) beside the same
config on the in-process engine, and what each SuperNode costs in memory.

The job is the main one (digits, Dirichlet(0.5), MLP, 3 local epochs, every client trains and evaluates every round)
with `num_clients` = N. For each N the federation starts once; then `--repeats` deployed runs and as many in-process
runs of `--rounds` rounds each. A round's time is its `round_seconds` in metrics.csv (train + evaluate + central
evaluation + checkpoint); "steady" is the median over rounds 2.., "first" round 1 (it includes every node loading
the data set). The table shows the medians over repeats, the goal (a deployed round within 2 s of twice the
simulated one) and the memory of one node (the SuperNode and its warm ClientApp worker, RSS summed over both
processes): idle after the federation starts, and the peak while it handles messages (sampled every second), plus the
server side (SuperLink, ServerApp, proxy) at its peak.

    python bench/deploy_throughput.py --nodes 3 10 --repeats 3
    python bench/deploy_throughput.py --nodes 30 --repeats 1 --rounds 3     # the 30-nodes-on-one-host check
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.config import compose_experiment  # noqa: E402
from fedsim.deploy.local_federation import LocalFederation  # noqa: E402
from fedsim.deploy.processes import descendants, process_children  # noqa: E402
from fedsim.run import run_experiment  # noqa: E402


def job(nodes: int, rounds: int, seed: int) -> list[str]:
    return [f"num_clients={nodes}", f"num_rounds={rounds}", f"seed={seed}", "progress=false"]


def round_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        return [float(row["round_seconds"]) for row in csv.DictReader(stream) if int(row["round"]) > 0]


def rss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class MemorySampler:
    """Peak RSS of each node's process tree and of the server's, sampled in the background."""

    def __init__(self, federation: LocalFederation) -> None:
        self.federation = federation
        self.node_peak = 0.0
        self.server_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def trees(self) -> tuple[list[set[int]], set[int]]:
        """The process ids of each node (SuperNode and worker) and of the server side, from one scan of /proc."""
        processes = self.federation.processes.processes
        tree = process_children()
        nodes = [{p.pid, *descendants([p.pid], tree)} for name, p in processes.items()
                 if name.startswith("supernode") and p.poll() is None]
        server = set().union(*({p.pid, *descendants([p.pid], tree)} for name, p in processes.items()
                               if not name.startswith("supernode")))
        return nodes, server

    def _run(self) -> None:
        # Cheap enough not to slow the federation it measures: the process trees are scanned every 10 s (a run's
        # ServerApp and workers live that long), the RSS of the known processes read every second.
        scanned = 0.0
        while not self._stop.is_set():
            if time.monotonic() - scanned > 10:
                nodes, server, scanned = *self.trees(), time.monotonic()
            node = max((rss_mib(pids) for pids in nodes), default=0.0)
            self.node_peak, self.server_peak = max(self.node_peak, node), max(self.server_peak, rss_mib(server))
            self._stop.wait(1.0)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(nodes: int, rounds: int, repeats: int, work: Path) -> dict[str, float]:
    deployed_steady, deployed_first, simulated_steady, superlink_cpu = [], [], [], []
    with LocalFederation(work / f"federation-{nodes}", nodes, say=lambda line: None) as federation:
        time.sleep(5)  # let every worker finish importing torch
        idle_node = statistics.median(rss_mib(tree) for tree in MemorySampler(federation).trees()[0])
        superlink = federation.processes.processes["superlink"].pid
        with MemorySampler(federation) as sampler:
            for repeat in range(repeats):
                run_dir = work / f"deployed-{nodes}-{repeat}"
                before = cpu_seconds(superlink)
                federation.submit(job(nodes, rounds, repeat), run_dir, timeout=3600)
                superlink_cpu.append((cpu_seconds(superlink) - before) / rounds)
                seconds = round_seconds(run_dir)
                deployed_first.append(seconds[0])
                deployed_steady.append(statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0])
                print(f"  deployed, {nodes} nodes, repeat {repeat}: rounds {[round(s, 2) for s in seconds]}",
                      flush=True)
    for repeat in range(repeats):
        run_dir = work / f"simulated-{nodes}-{repeat}"
        run_experiment(compose_experiment([*job(nodes, rounds, repeat), "engine=inprocess"]), run_dir,
                       show_progress=False)
        seconds = round_seconds(run_dir)
        simulated_steady.append(statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0])
    return {"deployed": statistics.median(deployed_steady), "first": statistics.median(deployed_first),
            "superlink_cpu": statistics.median(superlink_cpu),
            "simulated": statistics.median(simulated_steady), "idle_node": idle_node, "busy_node": sampler.node_peak,
            "server": sampler.server_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    work = tempfile.mkdtemp(prefix="fedsim-deploy-bench-")
    try:
        for nodes in args.nodes:
            result = measure(nodes, args.rounds, args.repeats, Path(work))
            goal = 2 * result["simulated"] + 2
            rows.append((nodes, result, goal))
            print(f"{nodes} nodes: {result}", flush=True)
    except BaseException:
        print(f"the federations' logs and run folders are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work)
    print(f"\nmain job, {args.rounds} rounds, median of {args.repeats} (s / round; RSS in MiB)\n")
    print("| nodes | deployed, steady | deployed, round 1 | in-process | goal (2 x in-process + 2) | met "
          "| SuperLink CPU per round | one node idle | one node busy (peak) | server side (peak) |")
    print("|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|")
    for nodes, r, goal in rows:
        print(f"| {nodes} | {r['deployed']:.2f} | {r['first']:.2f} | {r['simulated']:.2f} | {goal:.2f} | "
              f"{'yes' if r['deployed'] <= goal else 'no'} | {r['superlink_cpu']:.2f} | {r['idle_node']:.0f} | "
              f"{r['busy_node']:.0f} | {r['server']:.0f} |")


if __name__ == "__main__":
    main()
