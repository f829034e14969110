"""Accelerators: the KVM binding (``abi``: layouts, ``kvm``: descriptors, ``cpuid``: CPU models)."""
