"""QMP and HMP commands about the machine: CPUs, KVM, memory and device trees.

HMP texts are QEMU's (``info cpus``, ``info registers``, ``info mtree``,
``info qtree``, ``info kvm``, ``info pci``). Without a guest (``-M none``) there are no
CPUs: the CPU commands answer with empty lists or nothing. ``query-kvm``
lives with the accelerator choice (``vmd.system.accel``).
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import CpuInfoFast, CpuInstanceProperties, SysEmuTarget


def _machine(ctx: Any) -> Any:
    return ctx.daemon.machine


def qmp_query_cpus_fast(ctx: Any) -> list[CpuInfoFast]:
    machine = _machine(ctx)
    if machine is None:
        return []
    smp = ctx.daemon.config.smp
    result = []
    for index, thread_id in machine.cpu_threads():
        props = CpuInstanceProperties(
            socket_id=index // (smp.cores * smp.threads * smp.dies),
            core_id=(index // smp.threads) % smp.cores, thread_id=index % smp.threads)
        if smp.dies > 1:
            props.die_id = (index // (smp.cores * smp.threads)) % smp.dies
        result.append(CpuInfoFast(cpu_index=index, qom_path=f"/machine/unattached/device[{_qom_slot(index)}]",
                                  thread_id=thread_id, props=props, target=SysEmuTarget.X86_64))
    return result


def _qom_slot(index: int) -> int:
    """QEMU creates the APIC of CPU 0 between CPU 0 and CPU 1."""
    return 0 if index == 0 else index + 1


# -- HMP ----------------------------------------------------------------------

def info_cpus(ctx: Any, _args: list[str]) -> str:
    machine = _machine(ctx)
    if machine is None:
        return ""
    return "".join(f"{'*' if index == 0 else ' '} CPU #{index}: thread_id={thread_id}\n"
                   for index, thread_id in machine.cpu_threads())


def info_registers(ctx: Any, args: list[str]) -> str:
    """``info registers [-a|vcpu]``: CPU 0 (the monitor's CPU), all, or one."""
    machine = _machine(ctx)
    if machine is None:
        return ""
    from vmd.machine.registers import dump_registers
    vcpus = machine.board.vcpus
    word = args[0].strip() if args else ""
    if word == "-a":
        chosen = vcpus
    elif word:
        index = int(word, 0) if word.isdigit() else -1
        if not 0 <= index < len(vcpus):
            return f"CPU#{word} not available\n"
        chosen = vcpus[index:index + 1]
    else:
        chosen = vcpus[:1]
    return "".join(f"\nCPU#{vcpu.index}\n{dump_registers(vcpu)}" for vcpu in chosen)


def info_mtree(ctx: Any, _args: list[str]) -> str:
    machine = _machine(ctx)
    if machine is None:
        return ""
    from vmd.machine.memory import mtree_text
    board = machine.board
    return mtree_text([board.memory, board.io])


def info_qtree(ctx: Any, _args: list[str]) -> str:
    machine = _machine(ctx)
    if machine is None:
        return "bus: main-system-bus\n  type System\n"
    from vmd.qom.qtree import qtree
    return qtree(machine.board.root_bus)


def info_pci(ctx: Any, args: list[str]) -> str:
    from vmd.hw.pci.info import info_pci as text
    return text(ctx, args)


#: HMP's ``/fmt`` sizes for port I/O (``b``, ``h``, ``w``) and the letter QEMU prints for each.
_PORT_SIZES = {"b": (1, "b"), "h": (2, "w"), "w": (4, "l")}


def _port_access(args: list[str]) -> tuple[int, str, list[int]]:
    """``/fmt addr [value]``: the access size, its letter and the numbers."""
    words = args[0].split() if args else []
    size, letter = 1, "b"
    if words and words[0].startswith("/"):
        size, letter = _PORT_SIZES.get(words.pop(0)[-1:], (1, "b"))
    return size, letter, [int(word, 0) for word in words]


def hmp_ioport_read(ctx: Any, args: list[str]) -> str:
    """``i /fmt addr``: read a port as a vCPU would (no CPU needs to run)."""
    size, letter, numbers = _port_access(args)
    address = numbers[0] & 0xFFFF
    machine = _machine(ctx)
    value = (1 << (8 * size)) - 1
    if machine is not None:
        with machine.bql:
            value = machine.board.pio.read(address, size)
    return f"port{letter}[0x{address:04x}] = 0x{value:0{2 * size}x}\n"


def hmp_ioport_write(ctx: Any, args: list[str]) -> str:
    """``o /fmt addr value``: write a port as a vCPU would."""
    size, _letter, numbers = _port_access(args)
    machine = _machine(ctx)
    if machine is not None:
        with machine.bql:
            machine.board.pio.write(numbers[0] & 0xFFFF, size, numbers[1] & ((1 << (8 * size)) - 1))
    return ""


def info_kvm(ctx: Any, _args: list[str]) -> str:
    """As ``query-kvm``: enabled when KVM is the accelerator (vmd.system.accel)."""
    return f"kvm support: {'enabled' if ctx.daemon.accel == 'kvm' else 'disabled'}\n"
