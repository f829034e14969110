"""HMP ``info block`` and ``info block-jobs``: the human views of
``query-block``, ``query-named-block-nodes`` and ``query-block-jobs``.

They print what the QMP commands return, in QEMU's words and layout
(hmp_info_block and print_block_info, hmp_info_block_jobs), so a user
who reads a QEMU monitor reads vmd's the same way, and the text follows
whatever the QMP side shows (throttling limits, backing files, devices).
"""

from __future__ import annotations

from typing import Any

from vmd.img.info import human

#: ``info block``'s flags, in the order QEMU's argument parser takes them.
_FLAGS = ("n", "v")


def info_block(ctx: Any, args: list[str]) -> str:
    """``info block [-n] [-v] [device]``: backends (all, or the one named),
    else named nodes (with ``-n``, or when no backend has that name)."""
    words = args[0].split() if args else []
    flags: set[str] = set()
    for flag in _FLAGS:
        if words and words[0].startswith("-") and words[0][1:2] == flag:
            flags.add(flag)
            words.pop(0)
    if words and words[0].startswith("-") and words[0][1:2] not in flags:
        return f"block: unsupported option -{words[0][1:2]}\nTry \"help info block\" for more information\n"
    device = words[0] if words else None
    verbose, nodes = "v" in flags, "n" in flags
    from vmd.block.commands import qmp_query_block, qmp_query_named_block_nodes
    text, printed = "", False
    for index, info in enumerate([] if nodes else qmp_query_block(ctx)):
        if device is None or info["device"] == device:
            # As QEMU: a blank line before every entry but the list's first, shown or not.
            text += ("\n" if index else "") + _describe(info, info.get("inserted"), verbose)
            printed = True
    if (device is None and not nodes) or printed:
        return text
    for index, node in enumerate(qmp_query_named_block_nodes(ctx, False)):
        if device is None or node["node-name"] == device:
            text += ("\n" if index else "") + _describe(None, node, verbose)
    return text


def _describe(info: dict[str, Any] | None, inserted: dict[str, Any] | None, verbose: bool) -> str:
    """print_block_info(): one backend (``info``) or node (``inserted`` alone)."""
    lines = [_title(info, inserted)]
    if info is not None:
        if "qdev" in info:
            lines.append(f"    Attached to:      {info['qdev']}")
        if info.get("io-status", "ok") != "ok":
            lines.append(f"    I/O status:       {info['io-status']}")
        if info["removable"]:
            lines.append(f"    Removable device: {'' if info['locked'] else 'not '}locked, "
                         f"tray {'open' if info.get('tray_open') else 'closed'}")
    if inserted is None:
        return "\n".join(lines) + "\n"
    cache = inserted["cache"]
    lines.append(f"    Cache mode:       {'writeback' if cache['writeback'] else 'writethrough'}"
                 f"{', direct' if cache['direct'] else ''}{', ignore flushes' if cache['no-flush'] else ''}")
    if "backing_file" in inserted:
        lines.append(f"    Backing file:     {inserted['backing_file']} "
                     f"(chain depth: {inserted['backing_file_depth']})")
    if inserted["detect_zeroes"] != "off":
        lines.append(f"    Detect zeroes:    {inserted['detect_zeroes']}")
    if any(inserted[limit] for limit in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")):
        lines.append(_throttling(inserted))
    text = "\n".join(lines) + "\n"
    if verbose:
        image: dict[str, Any] | None = inserted["image"]
        text += "\nImages:\n"
        while image is not None:
            text += human(image)
            image = image.get("backing-image")
    return text


def _title(info: dict[str, Any] | None, inserted: dict[str, Any] | None) -> str:
    """``drive0 (node): file (format, read-only)``, or the node's name or
    the device's path for an unnamed backend."""
    if info is not None and info["device"]:
        name = info["device"] + (f" ({inserted['node-name']})" if inserted and "node-name" in inserted else "")
    elif inserted is not None and "node-name" in inserted:
        name = inserted["node-name"]
    else:
        name = info.get("qdev", "<anonymous>") if info is not None else "<anonymous>"
    if inserted is None:
        return f"{name}: [not inserted]"
    return (f"{name}: {inserted['file']} ({inserted['drv']}{', read-only' if inserted['ro'] else ''}"
            f"{', encrypted' if inserted['encrypted'] else ''})")


def _throttling(inserted: dict[str, Any]) -> str:
    limits = ("bps", "bps_rd", "bps_wr", "bps_max", "bps_rd_max", "bps_wr_max",
              "iops", "iops_rd", "iops_wr", "iops_max", "iops_rd_max", "iops_wr_max", "iops_size")
    values = " ".join(f"{limit}={inserted.get(limit, 0)}" for limit in limits)
    return f"    I/O throttling:   {values} group={inserted.get('group', '')}"


def info_block_jobs(ctx: Any, _args: list[str]) -> str:
    """``info block-jobs``: one line per job, or "No active jobs"."""
    from vmd.block.jobs.commands import qmp_query_block_jobs
    jobs = qmp_query_block_jobs(ctx)
    if not jobs:
        return "No active jobs\n"
    lines = []
    for job in jobs:
        head = f"Streaming device {job.device}" if job.type == "stream" else f"Type {job.type}, device {job.device}"
        lines.append(f"{head}: Completed {job.offset} of {job.len} bytes, speed limit {job.speed} bytes/s")
    return "\n".join(lines) + "\n"
