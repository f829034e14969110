"""virtio-serial: ``virtio-serial-pci`` with ``virtconsole`` and ``virtserialport`` ports.

The device (virtio id 3, QEMU's virtio-serial-device) has ``max_ports``
ports, each with a receive and a transmit queue: port 0 uses queues 0/1,
the control queues are 2 (device -> driver) and 3 (driver -> device), and
port n > 0 uses queues 2n+2/2n+3; sizes 128, control 32, as QEMU's. It
offers MULTIPORT and (``emergency-write``) EMERG_WRITE.

Ports are devices on the device's ``virtio-serial-bus`` (named ``ID.0``
after the PCI device's id, ``virtio-serial-bus.0`` without one). The
control protocol follows QEMU's handle_control_message: on DEVICE_READY
every port is announced (PORT_ADD); on PORT_READY a console port gets
CONSOLE_PORT, a named one PORT_NAME, and one whose host side is open
PORT_OPEN; the driver's PORT_OPEN opens or closes the guest side and, for
a port with an id, emits ``VSERPORT_CHANGE``. A ``virtconsole`` is always
open on the host side; a ``virtserialport``'s host side follows its
chardev's peer (a socket client connecting or leaving).

Data: what the driver transmits goes to the port's chardev (dropped while
the host side is closed; held, with the queue stalled, while the chardev
is full); chardev input is taken only while the guest has the port open
and has posted receive buffers, so input waits in the chardev, not here.
Threads: as every virtio model (``vmd.hw.virtio.device``), BQL held.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from vmd._generated import events
from vmd.hw.charport import CharPort
from vmd.hw.pci.device import TYPE_PCI_BUS
from vmd.hw.virtio.device import VirtioDevice
from vmd.hw.virtio.pci import TYPE_VIRTIO_PCI, VirtioPciDevice
from vmd.hw.virtio.queue import Element
from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.qtree import Bus
from vmd.qom.types import TYPE_BUS, TYPE_DEVICE, TYPES, Category, TypeInfo, device_type

if TYPE_CHECKING:
    from vmd.hw.context import DeviceContext

F_MULTIPORT = 1 << 1
F_EMERG_WRITE = 1 << 2
CONTROL_RX, CONTROL_TX = 2, 3
DATA_QUEUE_SIZE, CONTROL_QUEUE_SIZE = 128, 32
MAX_PORTS_LIMIT = 511           # QEMU: VIRTIO_QUEUE_MAX / 2 - 1
NO_PORT = 0xFFFFFFFF            # ``nr`` not given (QEMU's VIRTIO_CONSOLE_BAD_ID)

DEVICE_READY, PORT_ADD, PORT_REMOVE, PORT_READY = 0, 1, 2, 3
CONSOLE_PORT, RESIZE, PORT_OPEN, PORT_NAME = 4, 5, 6, 7
_CONTROL = struct.Struct("<IHH")

TYPE_SERIAL_BUS = "virtio-serial-bus"
TYPE_SERIAL_PORT = "virtio-serial-port"

for _info in (TypeInfo(TYPE_SERIAL_BUS, TYPE_BUS),
              TypeInfo(TYPE_SERIAL_PORT, TYPE_DEVICE, abstract=True, bus_type=TYPE_SERIAL_BUS, properties=(
                  Property("nr", "uint32", NO_PORT, ""),
                  Property("name", "str"),
                  Property("chardev", "str", None, "ID of a chardev to use as a backend"))),
              TypeInfo("virtio-serial-pci-base", TYPE_VIRTIO_PCI, abstract=True, bus_type=TYPE_PCI_BUS)):
    TYPES.register(_info)


def rx_queue(nr: int) -> int:
    return 0 if nr == 0 else 2 * nr + 2


class SerialPort(Device):
    """A port (QEMU's VirtIOSerialPort): its number, name, chardev and open state."""

    is_console: ClassVar[bool] = False

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        self.nr = props.get("nr", NO_PORT)
        self.serial: VirtioSerial | None = None
        self.port: CharPort | None = None
        self.host_connected = self.is_console
        self.guest_connected = False
        self.events: Any = None
        self._rx: Element | None = None
        self._tx: tuple[Element, bytes] | None = None

    def realize(self, ctx: DeviceContext) -> None:
        if self.nr == 0 and not self.is_console:
            raise QOMError("Port number 0 on virtio-serial devices reserved for virtconsole devices "
                           "for backward compatibility.")
        chardev_id = self.props.get("chardev")
        if chardev_id:
            self.port = ctx.chardev(chardev_id)
            if self.port is None:
                raise QOMError(f"Property '{self.type_name}.chardev' can't find value '{chardev_id}'")
            self.port.connect(self)
        self.events = ctx.events
        super().realize(ctx)

    async def release(self) -> None:
        if self.port is not None:
            self.port.disconnect()
            self.port = None

    # -- guest side ---------------------------------------------------------------

    @property
    def guest_open(self) -> bool:
        """Whether the guest takes input (without MULTIPORT only port 0 exists, always open)."""
        serial = self.serial
        if serial is None or not serial.status & 0x04:
            return False
        return self.guest_connected if serial.has_feature(1) else self.nr == 0

    def set_guest_connected(self, connected: bool) -> None:
        """The driver opened or closed the port (QEMU's set_guest_connected)."""
        if connected == self.guest_connected:
            return
        self.guest_connected = connected
        if self.id and self.events is not None:
            events.qapi_event_send_vserport_change(self.events, id=self.id, open=connected)
        if connected and self.port is not None:
            self.port.accept_input()

    def transmit(self) -> None:
        """Send what the driver queued on the port's transmit queue to the chardev."""
        serial = self.serial
        assert serial is not None
        index = rx_queue(self.nr) + 1
        while True:
            if self._tx is None:
                element = serial.pop(index)
                if element is None:
                    break
                self._tx = (element, element.read_all())
            element, data = self._tx
            if self.port is not None and self.host_connected and data and self.port.write(data) == 0:
                return  # the chardev is full: ``writable`` resumes
            self._tx = None
            serial.push(index, element, 0, notify=False)
        serial.notify(index)

    def reset(self) -> None:
        """The device was reset: requests are gone, the guest side is closed."""
        self._rx = None
        self._tx = None
        self.set_guest_connected(False)

    # -- CharHandlers (loop thread, BQL held) ----------------------------------------

    def can_receive(self) -> int:
        serial = self.serial
        if serial is None or not self.guest_open:
            return 0
        if self._rx is None:
            self._rx = serial.pop(rx_queue(self.nr))
        return self._rx.writable_size if self._rx is not None else 0

    def receive(self, data: bytes) -> None:
        serial = self.serial
        index = rx_queue(self.nr)
        while data and serial is not None and self.can_receive():
            element, self._rx = self._rx, None
            assert element is not None
            done = element.write(data)
            serial.push(index, element, done, notify=False)
            data = data[done:]
        if serial is not None:
            serial.notify(index)

    def receive_break(self) -> None:
        """virtio-serial has no break."""

    def writable(self) -> None:
        if self.serial is not None and self._tx is not None:
            self.transmit()

    def peer(self, connected: bool) -> None:
        """QEMU's chr_event: a virtserialport's host side follows the chardev."""
        if self.is_console or self.serial is None:
            return
        self.host_connected = connected
        self.serial.send_control(self.nr, PORT_OPEN, int(connected))
        if connected and self._tx is None:
            self.transmit()


@device_type("virtserialport", TYPE_SERIAL_PORT, categories=(Category.INPUT,))
class VirtSerialPort(SerialPort):
    pass


@device_type("virtconsole", "virtserialport", categories=(Category.INPUT,))
class VirtConsole(SerialPort):
    is_console = True


class SerialBus(Bus):
    """``virtio-serial-bus``: gives ports their numbers, with QEMU's checks."""

    def __init__(self, name: str, serial: VirtioSerial) -> None:
        super().__init__(name, TYPE_SERIAL_BUS)
        self.serial = serial
        self.hotpluggable = True  # ports come and go at once, told to the driver

    def attach(self, device: Device) -> None:
        assert isinstance(device, SerialPort)
        ports = self.serial.ports
        if device.nr == NO_PORT:
            device.nr = 0 if device.is_console and 0 not in ports else self._free_nr()
        if device.nr in ports:
            raise QOMError(f"virtio-serial-bus: A port already exists at id {device.nr}")
        name = device.props.get("name")
        if name is not None and any(p.props.get("name") == name for p in ports.values()):
            raise QOMError(f"virtio-serial-bus: A port already exists by name {name}")
        if device.nr >= self.serial.max_ports:
            raise QOMError(f"virtio-serial-bus: Out-of-range port id specified, max. allowed: "
                           f"{self.serial.max_ports - 1}")
        device.serial = self.serial
        device.props["nr"] = device.nr
        ports[device.nr] = device
        super().attach(device)
        self.serial.send_control(device.nr, PORT_ADD, 1)

    def detach(self, device: Device) -> None:
        assert isinstance(device, SerialPort)
        if self.serial.ports.pop(device.nr, None) is device and device.realized:
            self.serial.send_control(device.nr, PORT_REMOVE, 1)
        device.serial = None
        super().detach(device)

    def _free_nr(self) -> int:
        """QEMU's find_free_port_id: port 0 is kept for a console; the bitmap is
        whole 32-bit words, so the answer may be past ``max_ports``."""
        words = (self.serial.max_ports + 31) // 32
        for nr in range(1, 32 * words):
            if nr not in self.serial.ports:
                return nr
        raise QOMError("virtio-serial-bus: Maximum port limit for this device reached")


class VirtioSerial(VirtioDevice):
    """The virtio-serial device model (control queues and port queues)."""

    device_id = 3
    type_name = "virtio-serial-device"

    def __init__(self, max_ports: int, emergency_write: bool) -> None:
        sizes = [DATA_QUEUE_SIZE] * 2 + [CONTROL_QUEUE_SIZE] * 2 + [DATA_QUEUE_SIZE] * (2 * (max_ports - 1))
        super().__init__(sizes, F_MULTIPORT | (F_EMERG_WRITE if emergency_write else 0), config_size=12)
        self.max_ports = max_ports
        self.config[4:8] = max_ports.to_bytes(4, "little")
        self.ports: dict[int, SerialPort] = {}
        self._control: deque[bytes] = deque()

    def _port_of(self, index: int) -> SerialPort | None:
        nr = 0 if index < 2 else index // 2 - 1
        return self.ports.get(nr)

    def handle_queue(self, index: int) -> None:
        if index == CONTROL_TX:
            self._control_from_driver()
        elif index == CONTROL_RX:
            self._flush_control()
        else:
            port = self._port_of(index)
            if port is None:
                self._discard(index)
            elif index % 2:
                port.transmit()
            elif port.port is not None:
                port.port.accept_input()  # new receive buffers: let the chardev deliver

    def _discard(self, index: int) -> None:
        while (element := self.pop(index)) is not None:
            self.push(index, element, 0, notify=False)
        self.notify(index)

    # -- control messages ------------------------------------------------------------

    def send_control(self, nr: int, event: int, value: int, extra: bytes = b"") -> None:
        """Queue a control message for the driver (dropped until the driver is up)."""
        if not self.status & 0x04 or not self.has_feature(1) or not self.queues[CONTROL_RX].enabled:
            return
        self._control.append(_CONTROL.pack(nr, event, value) + extra)
        self._flush_control()

    def _flush_control(self) -> None:
        sent = False
        while self._control:
            element = self.pop(CONTROL_RX)
            if element is None:
                break
            message = self._control.popleft()
            self.push(CONTROL_RX, element, element.write(message), notify=False)
            sent = True
        if sent:
            self.notify(CONTROL_RX)

    def _control_from_driver(self) -> None:
        while (element := self.pop(CONTROL_TX)) is not None:
            data = element.read_all()
            self.push(CONTROL_TX, element, 0, notify=False)
            if len(data) >= _CONTROL.size:
                self._handle_control(*_CONTROL.unpack_from(data))
        self.notify(CONTROL_TX)

    def _handle_control(self, nr: int, event: int, value: int) -> None:
        """QEMU's handle_control_message."""
        if event == DEVICE_READY:
            if not value:
                self.error("Guest failure in adding device")
                return
            for known in sorted(self.ports):
                self.send_control(known, PORT_ADD, 1)
            return
        port = self.ports.get(nr)
        if port is None:
            return  # QEMU only reports "Unexpected port id"
        if event == PORT_READY and value:
            if port.is_console:
                self.send_control(nr, CONSOLE_PORT, 1)
            name = port.props.get("name")
            if name:
                self.send_control(nr, PORT_NAME, 1, name.encode() + b"\0")
            if port.host_connected:
                self.send_control(nr, PORT_OPEN, 1)
        elif event == PORT_OPEN:
            port.set_guest_connected(bool(value))

    # -- config, reset -----------------------------------------------------------------

    def write_config(self, offset: int, data: bytes) -> None:
        """``emerg_wr`` (offset 8): one character for port 0 without queues."""
        if offset == 8 and self.guest_features & F_EMERG_WRITE and data[:1]:
            port = self.ports.get(0)
            if port is not None and port.port is not None:
                port.port.write(data[:1])

    def reset(self) -> None:
        self._control.clear()
        for port in self.ports.values():
            port.reset()
        super().reset()


@device_type("virtio-serial-pci", "virtio-serial-pci-base", categories=(Category.INPUT,), alias="virtio-serial",
             properties=(
    Property("vectors", "uint32", 2),
    Property("max_ports", "uint32", 31, in_qtree=False),
    Property("emergency-write", "bool", True, "on/off", in_qtree=False),
))
class VirtioSerialPci(VirtioPciDevice):
    """The PCI function; its ports plug into ``bus``."""

    pci_class = 0x078000

    def create_vdev(self, props: dict[str, Any]) -> VirtioDevice:
        max_ports = props.get("max_ports", 31)
        if max_ports == 0:
            raise QOMError("Maximum number of serial ports not specified")
        if max_ports > MAX_PORTS_LIMIT:
            raise QOMError(f"maximum ports supported: {MAX_PORTS_LIMIT}")
        return VirtioSerial(max_ports, props.get("emergency-write", True))

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        assert isinstance(self.vdev, VirtioSerial)
        self.serial_bus = SerialBus(f"{dev_id}.0" if dev_id else "virtio-serial-bus.0", self.vdev)
        self.child_buses.append(self.serial_bus)
