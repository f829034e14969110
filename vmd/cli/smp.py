"""-smp: parse the topology and fill in what was left out.

The rules are QEMU 7.2's machine_parse_smp_config() for current machine
types (prefer cores over sockets).  Error texts match QEMU for a machine
without dies or clusters.
"""

from __future__ import annotations

from vmd.cli.config import SmpConfig
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import split_params

SMP_KEYS = ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus")


def parse_smp_values(arg: str, values: dict[str, int],
                     warnings: list[str] | None = None) -> None:
    """Merge one -smp argument into ``values`` (QEMU merges repeated -smp)."""
    for key, text in split_params(arg, "cpus", warnings):
        if key not in SMP_KEYS:
            raise OptionError(f"Parameter 'smp.{key}' is unexpected")
        if not text.isascii() or not text.isdigit():
            raise OptionError(f"Parameter 'smp.{key}' expects integer")
        values[key] = int(text)


def compute_smp(values: dict[str, int]) -> SmpConfig:
    """Fill in omitted topology values and check the result is consistent."""
    if any(values.get(key) == 0 for key in SMP_KEYS):
        raise OptionError("Invalid CPU topology: "
                          "CPU topology parameters must be greater than zero")
    cpus, maxcpus = values.get("cpus", 0), values.get("maxcpus", 0)
    sockets, cores, threads = (values.get(k, 0) for k in ("sockets", "cores", "threads"))
    dies, clusters = values.get("dies", 1), values.get("clusters", 1)
    if not cpus and not maxcpus:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        if not cores:
            sockets, threads = sockets or 1, threads or 1
            cores = maxcpus // (sockets * dies * clusters * threads)
        elif not sockets:
            threads = threads or 1
            sockets = maxcpus // (dies * clusters * cores * threads)
        if not threads:
            threads = maxcpus // (sockets * dies * clusters * cores)
    total = sockets * dies * clusters * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    shape = f"sockets ({sockets}) * cores ({cores}) * threads ({threads})"
    if total != maxcpus:
        raise OptionError("Invalid CPU topology: product of the hierarchy must match "
                          f"maxcpus: {shape} != maxcpus ({maxcpus})")
    if maxcpus < cpus:
        raise OptionError("Invalid CPU topology: maxcpus must be equal to or greater "
                          f"than smp: {shape} == maxcpus ({maxcpus}) < smp_cpus ({cpus})")
    return SmpConfig(cpus=cpus, sockets=sockets, dies=dies, clusters=clusters,
                     cores=cores, threads=threads, maxcpus=maxcpus)
