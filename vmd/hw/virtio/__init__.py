"""virtio 1.x: guest memory views, split virtqueues, the device model
contract (``device.VirtioDevice``) and the modern PCI transport (``pci``).
"""
