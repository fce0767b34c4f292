"""What a plan is made for: nodes, each with its GPUs (count, memory per GPU) and CPU memory.

GPU memory comes from the user (`--gpu-memory`), this machine's CUDA devices, or a Ray node: its
`gpu-memory` label when the cluster sets one (`ray start --labels='{"gpu-memory": "80GiB"}'`), else
the accelerator type Ray detects (label `ray.io/accelerator-type`, resource `accelerator_type:X`)
looked up below. The table holds each type's marketed capacity in decimal GB, which is at or below
what CUDA reports for every card listed (an 80 GB H100 reports 81,559 MiB = 85.5e9 bytes); where one
name covers several sizes (A100, H100 NVL, V100 32 GB) it holds the smallest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from runner.config import parse_size
from runner.errors import ConfigError

GB = 10**9
GIB = 2**30
MEMORY_LABEL = "gpu-memory"

# Ray's accelerator type names (ray.util.accelerators.accelerators) -> GPU memory.
ACCELERATOR_MEMORY = {
    "V100": 16 * GB,
    "P100": 16 * GB,
    "T4": 16 * GB,
    "P4": 8 * GB,
    "A10G": 24 * GB,
    "L4": 24 * GB,
    "L40S": 48 * GB,
    "A100": 40 * GB,
    "A100-40G": 40 * GB,
    "A100-80G": 80 * GB,
    "H100": 80 * GB,
    "H20": 96 * GB,
    "H200": 141 * GB,
    "B200": 180 * GB,
    "RTX-PRO-6000": 96 * GB,
}


@dataclass(frozen=True)
class Node:
    """One machine: its GPUs and their memory (None: not known), its CPU memory (None: not known)."""

    gpus: int
    gpu_memory: int | None = None
    cpu_memory: int | None = None


@dataclass(frozen=True)
class Hardware:
    """The nodes a plan places replicas on, and where their description came from."""

    nodes: tuple[Node, ...]
    source: str

    @property
    def gpus_per_node(self) -> list[int]:
        return [n.gpus for n in self.nodes]

    @property
    def has_gpus(self) -> bool:
        return any(n.gpus for n in self.nodes)

    @property
    def largest_node(self) -> int:
        return max(self.gpus_per_node, default=0)

    @property
    def gpu_memory(self) -> int | None:
        """The smallest GPU of the GPU nodes (a replica may land on any); None if any is unknown."""
        sizes = [n.gpu_memory for n in self.nodes if n.gpus]
        return None if not sizes or None in sizes else min(sizes)

    @property
    def cpu_memory(self) -> int | None:
        sizes = [n.cpu_memory for n in self.nodes]
        return None if not sizes or None in sizes else min(sizes)

    @classmethod
    def uniform(
        cls, nodes: int, gpus: int, gpu_memory: int | None, cpu_memory: int | None = None
    ) -> Hardware:
        """`nodes` identical machines (the `--gpus N --gpu-memory M` form)."""
        cpu = cpu_memory if cpu_memory is not None else machine_memory()
        where = f"{nodes} x " if nodes > 1 else ""
        size = f" x {gpu_memory / GIB:.0f} GiB" if gpu_memory else ""
        return cls(tuple(Node(gpus, gpu_memory, cpu) for _ in range(nodes)), f"{where}{gpus} GPU{size}")

    @classmethod
    def this_machine(cls) -> Hardware:
        """This machine's CUDA devices (none: a CPU plan) and physical memory."""
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        memory = min((torch.cuda.get_device_properties(i).total_memory for i in range(count)), default=None)
        node = Node(count, memory, machine_memory())
        what = f"{count} GPU x {memory / GIB:.0f} GiB" if count else "CPU only"
        return cls((node,), f"this machine ({what})")


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def node_gpu_memory(labels: dict[str, str], resources: dict[str, float]) -> int | None:
    """A Ray node's GPU memory from its labels or accelerator type; None when it tells neither."""
    if labels.get(MEMORY_LABEL):
        try:
            return parse_size(labels[MEMORY_LABEL])
        except ValueError as err:
            raise ConfigError(f"Ray node label {MEMORY_LABEL}: {err}") from None
    kind = labels.get("ray.io/accelerator-type")
    if kind is None:
        kind = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
    return ACCELERATOR_MEMORY.get(kind) if kind else None
