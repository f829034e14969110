"""A guest enumerates PCI through 0xcf8/0xcfc on QEMU and on vmd: same answers."""

from __future__ import annotations

from pathlib import Path

from tests.guest_harness import qemu_reference, require, run_to_exit

CHIPSET = """\
00:00.0 8086:1237 sub 1af4:1100 class 060000 rev 02 hdr 00 pin 0 line 0
00:01.0 8086:7000 sub 1af4:1100 class 060100 rev 00 hdr 80 pin 0 line 0
00:01.1 8086:7010 sub 1af4:1100 class 010180 rev 00 hdr 00 pin 0 line 0
  bar4 fffffff1
00:01.3 8086:7113 sub 1af4:1100 class 068000 rev 03 hdr 00 pin 1 line 9
"""


def test_chipset_functions_match_qemu(tmp_path: Path) -> None:
    require("vmd")
    output, code = run_to_exit("vmd", "pcilist", tmp_path, "-m", "16")
    assert code == 0x21 << 1 | 1
    assert output.replace("\r\n", "\n") == CHIPSET
    reference, _ = qemu_reference("pcilist", tmp_path, "-m", "16")
    assert output == reference
