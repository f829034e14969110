"""``vmd-img info``: what an image is (``qemu-img info``)."""

from __future__ import annotations

import os
from typing import Any

from vmd.block.drivers.qcow2 import format as qfmt
from vmd.block.drivers.qcow2.node import Qcow2Node, backing_path
from vmd.img.common import (
    Image,
    ImgError,
    allocated_file_size,
    getopt,
    open_image,
    qemu_json,
    run,
    size_to_str,
    split_common,
    usage_error,
)
from vmd.qmp.json_writer import qdict_order

USAGE = "info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename"
HELP = f"""usage: vmd-img {USAGE}

Show information about a disk image: format, virtual size, disk usage,
cluster size, backing file and format-specific details.

  -f fmt             image format (raw or qcow2); probed when omitted
  --output=ofmt      'human' (default) or 'json', as qemu-img info --output
  --backing-chain    also show every image of the backing chain
  -U, --force-share  accepted for compatibility (the image is opened read-only)
  -h, --help         display this help and exit
"""


def image_info(image: Image) -> dict[str, Any]:
    """The members of QEMU's ImageInfo for one open image (without its chain)."""
    node = image.node
    info: dict[str, Any] = {
        "virtual-size": node.reported_size(),
        "filename": image.path,
        "format": image.fmt,
    }
    actual = allocated_file_size(image.path)
    if actual is not None:
        info["actual-size"] = actual
    dirty = False
    if isinstance(node, Qcow2Node):
        dirty = bool(node.header.incompatible_features & qfmt.INCOMPAT_DIRTY)
        info.update(node.format_info())
        if node.backing_file:
            info["backing-filename"] = node.backing_file
            info["full-backing-filename"] = backing_path(node, image.path)
            if node.backing_fmt:
                info["backing-filename-format"] = node.backing_fmt
    info["dirty-flag"] = dirty
    return info


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def human(info: dict[str, Any]) -> str:
    """The text of ``qemu-img info`` for one image."""
    lines = [
        f"image: {info['filename']}",
        f"file format: {info['format']}",
        f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)",
        "disk size: " + (size_to_str(info["actual-size"]) if "actual-size" in info else "unavailable"),
    ]
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {full})"
        lines.append(line)
    if "backing-filename-format" in info:
        lines.append(f"backing file format: {info['backing-filename-format']}")
    specific = info.get("format-specific")
    if specific:
        lines.append("Format specific information:")
        for key, value in qdict_order(specific["data"]).items():
            lines.append(f"    {key.replace('-', ' ')}: {_value(value)}")
    return "\n".join(lines) + "\n"


async def collect(path: str, fmt: str | None, chain: bool) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = path
    while current is not None:
        key = os.path.realpath(current)
        if key in seen:
            raise ImgError(f"Backing file '{current}' creates an infinite loop.")
        seen.add(key)
        image = await open_image(current, fmt, backing=False)
        try:
            info = image_info(image)
        finally:
            await image.close()
        infos.append(info)
        if not chain:
            break
        current = info.get("full-backing-filename")
        fmt = info.get("backing-filename-format")
    return infos


def main(argv: list[str]) -> int:
    opts, args = getopt(argv, "hf:U", ["help", "output=", "backing-chain", "force-share"])
    common, rest = split_common(opts)
    if common.help:
        print(HELP, end="")
        return 0
    fmt, out = common.fmt, common.output
    chain = ("--backing-chain", "") in rest
    if len(args) != 1:
        raise usage_error("Expecting one image file name")
    infos = run(lambda: collect(args[0], fmt, chain))
    if out == "json":
        print(qemu_json(infos if chain else infos[0]))
    else:
        print("\n".join(human(info) for info in infos), end="")
    return 0
