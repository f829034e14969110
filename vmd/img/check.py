"""``vmd-img check``: a read-only consistency check (``qemu-img check`` without ``-r``).

Exit status as qemu-img's: 0 no errors, 1 the check itself failed, 2
corruptions were found, 3 only leaked clusters were found, 63 the format
has no check.
"""

from __future__ import annotations

import sys
from typing import Any

from vmd.block.drivers.qcow2.check import CheckResult, check_qcow2
from vmd.block.drivers.qcow2.node import Qcow2Node
from vmd.img.common import ImgError, getopt, open_image, qemu_json, run, split_common, usage_error, write_messages
from vmd.img.progress import Progress

USAGE = "check [-q] [-f fmt] [--output=ofmt] [-p] [-U] filename"
HELP = f"""usage: vmd-img {USAGE}

Check a qcow2 image for consistency: walk the header, the L1 and L2 tables
and the refcount table and blocks, count the references every host cluster
should have and compare them with the stored refcounts. The image is only
read, never modified.

  -f fmt             image format (raw or qcow2); probed when omitted
  --output=ofmt      'human' (default) or 'json', as qemu-img check --output
  -q, --quiet        print nothing but errors
  -p                 show progress (also shown when stderr is a terminal)
  -U, --force-share  accepted for compatibility (the image is opened read-only)
  -r leaks|all       repair: not supported yet
  -h, --help         display this help and exit

Exit status: 0 no errors, 1 the check could not be completed, 2 corruptions
were found, 3 leaked clusters (but no corruptions) were found, 63 the image
format does not support checks.
"""


def report_json(path: str, fmt: str, res: CheckResult) -> dict[str, Any]:
    """QEMU's ImageCheck: optional counters only when non-zero."""
    out: dict[str, Any] = {"filename": path, "format": fmt, "check-errors": res.check_errors}
    optional = (
        ("image-end-offset", res.image_end_offset),
        ("corruptions", res.corruptions),
        ("leaks", res.leaks),
        ("total-clusters", res.total_clusters),
        ("allocated-clusters", res.allocated_clusters),
        ("fragmented-clusters", res.fragmented_clusters),
        ("compressed-clusters", res.compressed_clusters),
    )
    out.update((key, value) for key, value in optional if value)
    return out


def report_human(res: CheckResult) -> str:
    parts: list[str] = []
    if not (res.corruptions or res.leaks or res.check_errors):
        parts.append("No errors were found on the image.\n")
    else:
        if res.corruptions:
            parts.append(f"\n{res.corruptions} errors were found on the image.\n"
                         "Data may be corrupted, or further writes to the image may corrupt it.\n")
        if res.leaks:
            parts.append(f"\n{res.leaks} leaked clusters were found on the image.\n"
                         "This means waste of disk space, but no harm to data.\n")
        if res.check_errors:
            parts.append(f"\n{res.check_errors} internal errors have occurred during the check.\n")
    if res.total_clusters and res.allocated_clusters:
        parts.append(
            f"{res.allocated_clusters}/{res.total_clusters} = "
            f"{res.allocated_clusters * 100.0 / res.total_clusters:0.2f}% allocated, "
            f"{res.fragmented_clusters * 100.0 / res.allocated_clusters:0.2f}% fragmented, "
            f"{res.compressed_clusters * 100.0 / res.allocated_clusters:0.2f}% compressed clusters\n")
    if res.image_end_offset:
        parts.append(f"Image end offset: {res.image_end_offset}\n")
    return "".join(parts)


def exit_status(res: CheckResult) -> int:
    if res.check_errors:
        return 1
    if res.corruptions:
        return 2
    if res.leaks:
        return 3
    return 0


async def check_image(path: str, fmt: str | None, progress: Progress) -> tuple[str, CheckResult]:
    image = await open_image(path, fmt, backing=False)
    try:
        node = image.node
        if not isinstance(node, Qcow2Node):
            raise ImgError("This image format does not support checks", status=63)
        virtual = -(-node.total_size // 512) * 512
        started = False

        def tick(done: int, total: int) -> None:
            nonlocal started
            if not started:
                progress.start(total)
                started = True
            progress.update(done)

        result = await check_qcow2(node.file, node.header, list(node.l1), virtual, tick)
        if started:
            progress.finish()
        return image.fmt, result
    finally:
        await image.close()


def main(argv: list[str]) -> int:
    opts, args = getopt(argv, "hf:qr:pUT:", ["help", "output=", "quiet", "force-share", "repair="])
    common, rest = split_common(opts)
    if common.help:
        print(HELP, end="")
        return 0
    fmt, out, quiet, show_progress = common.fmt, common.output, common.quiet, common.progress
    for opt, value in rest:
        if opt in ("-r", "--repair"):
            if value not in ("leaks", "all"):
                raise ImgError("Invalid opt for -r")
            raise ImgError("Repairing images (-r) is not supported yet; vmd-img check only reads the image")
    if len(args) != 1:
        raise usage_error("Expecting one image file name")
    if quiet:
        show_progress = False
    path = args[0]
    progress = Progress(show_progress if show_progress is not None else (sys.stderr.isatty() and out == "human"))
    fmt_name, result = run(lambda: check_image(path, fmt, progress))
    write_messages(result.messages)
    if out == "json":
        print(qemu_json(report_json(path, fmt_name, result)))
    elif not quiet:
        print(report_human(result), end="")
    return exit_status(result)
