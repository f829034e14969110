"""The MC146818 real-time clock and CMOS RAM, ``mc146818rtc`` (QEMU's).

Port ``iobase`` (0x70) selects a register (bit 7, NMI mask, is ignored;
reading it returns 0xFF), ``iobase + 1`` reads or writes it. Registers
0x00-0x09 and the century byte 0x32 (also reachable as 0x37) hold the
time in BCD or binary (register B bit 2) and 12- or 24-hour format (bit
1); 0x0A-0x0D are the control registers; the rest is CMOS RAM, which
firmware conventions fill (``vmd.hw.pc_cmos``) and a reset keeps.

Time is the host's, as QEMU's default ``-rtc base=utc,clock=host``: the
registers are computed from the clock when read, and a guest that sets
the time (SET bit in B, then the registers) moves an offset. The update
cycle is modelled as QEMU does: UIP reads as set in the last 244 us of
each second; UF is set once per second (lazily, when register C is read,
or by a timer when UIE or AIE asks for interrupts); PF is set once per period
(register A's rate) while PIE is set, checked when C is read and by a
timer that raises the interrupt. IRQ 8 is
raised while a flag enabled in B is set and lowered by reading C.
"""

from __future__ import annotations

import calendar
import time

from vmd.hw.clock import Clock, Timer
from vmd.hw.context import DeviceContext
from vmd.hw.irq import IrqLine
from vmd.qom.device import Device
from vmd.qom.property import Property
from vmd.qom.types import TYPE_ISA_DEVICE, Category, device_type

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY, IBM_PS2_CENTURY = 0x32, 0x37
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

REG_A_UIP = 0x80
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE, REG_B_SQWE, REG_B_DM, REG_B_24H = (
    0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02)
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_C_MASK = 0x70
NS = 1_000_000_000
UIP_HOLD_NS = 8 * NS // 32768  # 244 us
CMOS_SIZE = 128


class Mc146818:
    """Registers, CMOS RAM and timing; ``read``/``write`` take offsets 0 and 1."""

    def __init__(self, irq: IrqLine, clock: Clock, base_year: int = 0) -> None:
        self.irq = irq
        self.clock = clock
        self.base_year = base_year
        self.cmos = bytearray(CMOS_SIZE)
        self.index = 0
        self.offset_ns = 0  # guest time minus host time
        self.last_uf_second = 0
        # The periodic clock: PF is due at start + n * period for each n
        # beyond ``periodic_count``; period 0 while PIE is off.
        self.periodic_start = 0
        self.periodic_period = 0
        self.periodic_count = 0
        self.periodic: Timer = clock.timer(self._periodic_tick)
        self.update: Timer = clock.timer(self._update_tick)
        self.cmos[REG_A] = 0x26
        self.cmos[REG_B] = REG_B_24H
        self.cmos[REG_D] = 0x80
        self.last_uf_second = self._guest_ns() // NS
        self._store_time(self._guest_ns())

    def set_cmos(self, index: int, value: int) -> None:
        """Board code fills CMOS RAM (QEMU's mc146818rtc_set_cmos_data)."""
        self.cmos[index] = value & 0xFF

    def reset(self) -> None:
        self.cmos[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE) & 0xFF
        self.cmos[REG_C] &= ~(REG_C_UF | REG_C_IRQF | REG_C_PF | REG_C_AF) & 0xFF
        self._schedule_timers()
        self.irq.set_level(0)

    # -- guest accesses ----------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        del size
        if offset == 0:
            return 0xFF
        index = CENTURY if self.index == IBM_PS2_CENTURY else self.index
        if index in TIME_REGISTERS and self._running():
            self._store_time(self._guest_ns())
        if index == REG_A:
            uip = REG_A_UIP if self._update_in_progress() else 0
            return (self.cmos[REG_A] & ~REG_A_UIP & 0xFF) | uip
        if index == REG_C:
            return self._read_c()
        return self.cmos[index]

    def write(self, offset: int, size: int, value: int) -> None:
        del size
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            return
        index = CENTURY if self.index == IBM_PS2_CENTURY else self.index
        if index == REG_A:
            self.cmos[REG_A] = (value & ~REG_A_UIP) & 0xFF
            self._schedule_timers()
        elif index == REG_B:
            self._write_b(value)
        elif index in (REG_C, REG_D):
            return  # read-only
        elif index in TIME_REGISTERS:
            self.cmos[index] = value
            if self._running():
                self._load_time()
        else:
            self.cmos[index] = value

    def _write_b(self, value: int) -> None:
        old = self.cmos[REG_B]
        if value & REG_B_SET:
            if self._running():
                self._store_time(self._guest_ns())  # freeze what the guest sees
            value &= ~REG_B_UIE & 0xFF
        elif old & REG_B_SET:
            self.cmos[REG_B] = value
            self._load_time()
        if (old ^ value) & (REG_B_DM | REG_B_24H) and not value & REG_B_SET:
            self.cmos[REG_B] = value
            self._store_time(self._guest_ns())  # registers in the new format
        self.cmos[REG_B] = value
        self._update_irq()
        self._schedule_timers()

    def _read_c(self) -> int:
        self._catch_up_update()
        self._catch_up_periodic()
        value = self.cmos[REG_C]
        self.cmos[REG_C] = 0
        self.irq.set_level(0)
        self._schedule_timers()
        return value

    # -- time ------------------------------------------------------------------------

    def _guest_ns(self) -> int:
        return self.clock.now_ns() + self.offset_ns

    def _running(self) -> bool:
        return not self.cmos[REG_B] & REG_B_SET and self.cmos[REG_A] & 0x70 <= 0x20

    def _update_in_progress(self) -> bool:
        return self._running() and self._guest_ns() % NS >= NS - UIP_HOLD_NS

    def _to_bcd(self, value: int) -> int:
        if self.cmos[REG_B] & REG_B_DM:
            return value
        return ((value // 10) << 4) | (value % 10)

    def _from_bcd(self, value: int) -> int:
        if self.cmos[REG_B] & REG_B_DM:
            return value
        return ((value >> 4) * 10) + (value & 0x0F)

    def _store_time(self, guest_ns: int) -> None:
        """Write the time registers for ``guest_ns`` (QEMU's rtc_set_cmos)."""
        tm = time.gmtime(guest_ns // NS)
        self.cmos[SECONDS] = self._to_bcd(tm.tm_sec)
        self.cmos[MINUTES] = self._to_bcd(tm.tm_min)
        if self.cmos[REG_B] & REG_B_24H:
            self.cmos[HOURS] = self._to_bcd(tm.tm_hour)
        else:
            hour = self._to_bcd(tm.tm_hour % 12 or 12)
            self.cmos[HOURS] = hour | (0x80 if tm.tm_hour >= 12 else 0)
        self.cmos[DAY_OF_WEEK] = self._to_bcd((tm.tm_wday + 1) % 7 + 1)
        self.cmos[DAY_OF_MONTH] = self._to_bcd(tm.tm_mday)
        self.cmos[MONTH] = self._to_bcd(tm.tm_mon)
        year = tm.tm_year - self.base_year
        self.cmos[YEAR] = self._to_bcd(year % 100)
        self.cmos[CENTURY] = self._to_bcd(year // 100)

    def _load_time(self) -> None:
        """The guest set the clock: move the offset (QEMU's rtc_set_time)."""
        hours = self.cmos[HOURS]
        if self.cmos[REG_B] & REG_B_24H:
            hour = self._from_bcd(hours & 0x7F)
        else:
            hour = self._from_bcd(hours & 0x7F) % 12 + (12 if hours & 0x80 else 0)
        year = (self._from_bcd(self.cmos[YEAR]) + self.base_year
                + self._from_bcd(self.cmos[CENTURY]) * 100)
        try:
            seconds = calendar.timegm((year, self._from_bcd(self.cmos[MONTH]),
                                       self._from_bcd(self.cmos[DAY_OF_MONTH]), hour,
                                       self._from_bcd(self.cmos[MINUTES]),
                                       self._from_bcd(self.cmos[SECONDS])))
        except (ValueError, OverflowError):
            return  # nonsense from the guest: keep the old time
        self.offset_ns = seconds * NS - self.clock.now_ns()
        self.last_uf_second = seconds

    # -- flags and timers ---------------------------------------------------------------

    def _catch_up_update(self) -> None:
        """Set UF when a second ended since the last check (lazy update cycle)."""
        if not self._running():
            return
        second = self._guest_ns() // NS
        if second > self.last_uf_second:
            self.last_uf_second = second
            self.cmos[REG_C] |= REG_C_UF
            if self._alarm_matches(second):
                self.cmos[REG_C] |= REG_C_AF
            self._update_irq()

    def _alarm_matches(self, second: int) -> bool:
        """Does the alarm match ``second``? 0xC0-0xFF in a field matches all."""
        self._store_time(second * NS)
        pairs = ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS))
        return all(self.cmos[alarm] & 0xC0 == 0xC0 or self.cmos[alarm] == self.cmos[now]
                   for alarm, now in pairs)

    def _update_irq(self) -> None:
        if self.cmos[REG_B] & self.cmos[REG_C] & REG_C_MASK:
            self.cmos[REG_C] |= REG_C_IRQF
            self.irq.set_level(1)

    def _period_ns(self) -> int:
        code = self.cmos[REG_A] & 0x0F
        if code == 0:
            return 0
        if code <= 2:
            code += 7
        return (1 << (code - 1)) * NS // 32768

    def _schedule_timers(self) -> None:
        """Run the periodic timer only with PIE, the update timer only with UIE/AIE."""
        period = self._period_ns() if self.cmos[REG_B] & REG_B_PIE else 0
        if period != self.periodic_period:
            self.periodic_period = period
            self.periodic_start = self.clock.now_ns()
            self.periodic_count = 0
        if period:
            self.periodic.arm(self.periodic_start + (self.periodic_count + 1) * period)
        else:
            self.periodic.cancel()
        if self._running() and self.cmos[REG_B] & (REG_B_UIE | REG_B_AIE):
            next_second = (self._guest_ns() // NS + 1) * NS
            self.update.arm(next_second - self.offset_ns)
        else:
            self.update.cancel()

    def _catch_up_periodic(self) -> None:
        """Set PF when a period ended since the last one counted.

        Computed from the clock, not counted by the timer, so PF is exact
        however late the timer runs; ticks in between are lost
        (``lost_tick_policy=discard``, QEMU's default for the RTC).
        """
        if not self.periodic_period:
            return
        count = (self.clock.now_ns() - self.periodic_start) // self.periodic_period
        if count > self.periodic_count:
            self.periodic_count = count
            self.cmos[REG_C] |= REG_C_PF
            self._update_irq()

    def _periodic_tick(self) -> None:
        """Timer callback: raise the interrupt of the period that ended."""
        self._catch_up_periodic()
        self._schedule_timers()

    def _update_tick(self) -> None:
        self._catch_up_update()
        self._schedule_timers()


@device_type("mc146818rtc", TYPE_ISA_DEVICE, categories=(Category.MISC,), properties=(
    Property("base_year", "int32", 1980),
    Property("iobase", "uint16", 0x70),
    Property("irq", "uint8", 8),
    Property("lost_tick_policy", "LostTickPolicy", "discard",
             enum=("discard", "delay", "slew")),
))
class Mc146818Rtc(Device):
    """``mc146818rtc`` on the ISA bus."""

    gpios = (("out", "", 1),)
    rtc: Mc146818

    def realize(self, ctx: DeviceContext) -> None:
        if self.props["base_year"] == 2000:
            # QEMU's boards ask for 2000, which predates the century byte;
            # its realize turns it into 0 so that byte reads 0x20.
            self.props["base_year"] = 0
        self.rtc = Mc146818(ctx.irq(self.props["irq"]), ctx.clock, self.props["base_year"])
        ctx.pio.map(self.props["iobase"], 2, self.rtc, "rtc")
        super().realize(ctx)

    def reset(self) -> None:
        self.rtc.reset()
