"""``vmd-img create``: a new raw or qcow2 image (``qemu-img create``)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from vmd.img.common import ImgError, getopt, open_image, parse_size, run, split_common, usage_error
from vmd.img.progress import Progress
from vmd.qmp.errors import QMPError

USAGE = "create [-q] [-p] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]"
HELP = f"""usage: vmd-img {USAGE}

Create a new disk image of 'size' bytes (suffixes k, M, G, T, P, E: powers
of 1024). With a backing file the size defaults to the backing image's.

  -f fmt             'raw' (default) or 'qcow2'
  -o options         comma-separated name=value list ('-o help' lists them)
  -b backing_file    backing file of a qcow2 image (relative to the new image)
  -F backing_fmt     format of the backing file (required with -b)
  -u                 do not open the backing file to check it
  -q, --quiet        do not print the 'Formatting ...' line
  -p                 show progress (preallocation=full)
  -h, --help         display this help and exit
"""

#: name -> help, per format; also the order qemu-img prints them in.
OPTIONS = {
    "raw": {
        "size": "Virtual disk size",
        "preallocation": "Preallocation mode (allowed values: off, falloc, full)",
    },
    "qcow2": {
        "size": "Virtual disk size",
        "compat": "Compatibility level (v2 [0.10], v3 [1.1])",
        "backing_file": "File name of a base image",
        "backing_fmt": "Image format of the base image",
        "cluster_size": "qcow2 cluster size",
        "preallocation": "Preallocation mode (allowed values: off)",
        "lazy_refcounts": "Postpone refcount updates",
        "refcount_bits": "Width of a reference count entry in bits",
        "extended_l2": "Extended L2 tables (allowed values: off)",
        "compression_type": "Compression method used for image cluster compression (allowed values: zlib)",
    },
}
_BOOL = {"on": True, "yes": True, "true": True, "y": True, "off": False, "no": False, "false": False, "n": False}


@dataclass
class Request:
    path: str
    fmt: str
    options: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    unsafe: bool = False


def parse_options(fmt: str, text: str, path: str) -> dict[str, str]:
    known = OPTIONS[fmt]
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if name not in known:
            raise ImgError(f"{path}: Invalid parameter '{name}'")
        if not sep:
            value = "on"
        out[name] = value
    return out


def _bool(options: dict[str, str], name: str, path: str) -> bool:
    value = options.get(name, "off")
    if value not in _BOOL:
        raise ImgError(f"{path}: Parameter '{name}' expects 'on' or 'off'")
    return _BOOL[value]


def _size_option(options: dict[str, str], name: str, path: str, default: int) -> int:
    if name not in options:
        return default
    try:
        return parse_size(options[name])
    except ValueError:
        raise ImgError(f"{path}: Parameter '{name}' expects a non-negative number below 2^64\n"
                       "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                       "and exabytes, respectively.") from None


def formatting_line(req: Request, size: int) -> str:
    """The 'Formatting ...' line, fields in qemu-img 7.2's order."""
    o = req.options
    if req.fmt == "raw":
        parts = [f"size={size}"]
        if "preallocation" in o:
            parts.append(f"preallocation={o['preallocation']}")
    else:
        cs = _size_option(o, "cluster_size", req.path, 65536)
        parts = [f"cluster_size={cs}", f"extended_l2={o.get('extended_l2', 'off')}"]
        if "preallocation" in o:
            parts.append(f"preallocation={o['preallocation']}")
        parts += [f"compression_type={o.get('compression_type', 'zlib')}", f"size={size}"]
        for name in ("compat", "backing_file", "backing_fmt"):
            if name in o:
                parts.append(f"{name}={o[name]}")
        parts += [f"lazy_refcounts={o.get('lazy_refcounts', 'off')}",
                  f"refcount_bits={o.get('refcount_bits', '16')}"]
    return f"Formatting '{req.path}', fmt={req.fmt} " + " ".join(parts)


async def backing_size(req: Request) -> int:
    """Open the backing file (as the new image will) to check it; its size."""
    name = req.options["backing_file"]
    path = name
    if not os.path.isabs(name):
        path = os.path.join(os.path.dirname(req.path), name)
    try:
        image = await open_image(path, req.options.get("backing_fmt"), backing=True)
    except ImgError as error:
        text = error.message
        prefix = f"Could not open '{path}': "
        if text.startswith(prefix + prefix):
            text = text[len(prefix):]
        raise ImgError(f"{req.path}: {text}\nCould not open backing image.") from None
    try:
        return image.node.total_size
    finally:
        await image.close()


async def _create_raw(req: Request, size: int, progress: Progress) -> None:
    from vmd.block.drivers.file import FileNode, fallocate
    mode = req.options.get("preallocation", "off")
    node = FileNode(req.path, req.path)
    await node.open()
    try:
        await node.truncate(0)
        if mode == "full":
            chunk = 1 << 20
            zeroes = memoryview(bytes(chunk))
            progress.start(size)
            done = 0
            while done < size:
                n = min(chunk, size - done)
                await node.write(done, zeroes[:n])
                done += n
                progress.update(done)
            progress.finish()
        else:
            await node.truncate(size)
            if mode == "falloc" and size:
                fallocate(node.fd, 0, 0, size)
            elif size:
                # Like QEMU: allocate the first block, so alignment probing works later.
                first = 4096 if size >= 4096 else min(512, size)
                await node.write(0, memoryview(bytes(first)))
        await node.flush()
    finally:
        await node.close()


async def _create_qcow2(req: Request, size: int) -> None:
    from vmd.block.drivers.file import FileNode
    from vmd.block.drivers.qcow2 import create_qcow2
    o = req.options
    compat = o.get("compat", "1.1")
    versions = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
    if compat not in versions:
        raise ImgError(f"{req.path}: Parameter 'version' does not accept value '{compat}'")
    if o.get("preallocation", "off") != "off":
        raise ImgError(f"{req.path}: Preallocation mode '{o['preallocation']}' is not supported for qcow2 "
                       "by vmd-img yet")
    if _bool(o, "extended_l2", req.path):
        raise ImgError(f"{req.path}: Extended L2 entries are not supported by vmd-img yet")
    if o.get("compression_type", "zlib") != "zlib":
        raise ImgError(f"{req.path}: Parameter 'compression-type' does not accept value "
                       f"'{o['compression_type']}'")
    try:
        refcount_bits = int(o.get("refcount_bits", "16"))
    except ValueError:
        raise ImgError(f"{req.path}: Parameter 'refcount_bits' expects a number") from None
    node = FileNode(req.path, req.path)
    await node.open()
    try:
        await create_qcow2(node, -(-size // 512) * 512,
                           cluster_size=_size_option(o, "cluster_size", req.path, 65536),
                           backing_file=o.get("backing_file"), backing_fmt=o.get("backing_fmt"),
                           lazy_refcounts=_bool(o, "lazy_refcounts", req.path),
                           version=versions[compat], refcount_bits=refcount_bits)
    finally:
        await node.close()


async def create(req: Request, quiet: bool, progress: Progress) -> None:
    o = req.options
    if req.fmt == "raw" and o.get("preallocation", "off") not in ("off", "falloc", "full"):
        raise ImgError(f"{req.path}: Parameter 'preallocation' does not accept value '{o['preallocation']}'")
    if req.fmt == "qcow2":
        _bool(o, "lazy_refcounts", req.path)
        _size_option(o, "cluster_size", req.path, 65536)
    if "backing_fmt" in o and "backing_file" not in o:
        raise ImgError(f"{req.path}: Backing format cannot be used without backing file")
    if "backing_file" in o and "backing_fmt" not in o:
        raise ImgError(f"{req.path}: Backing file specified without backing format")
    size = req.size
    if "backing_file" in o and not req.unsafe:
        base = await backing_size(req)
        if size is None:
            size = base
    if size is None:
        raise ImgError(f"{req.path}: Image creation needs a size parameter")
    if not quiet:
        print(formatting_line(req, size))
        sys.stdout.flush()
    try:
        fd = os.open(req.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError as error:
        raise ImgError(f"{req.path}: Could not create '{req.path}': {os.strerror(error.errno or 5)}") from None
    try:
        if req.fmt == "raw":
            await _create_raw(req, size, progress)
        else:
            await _create_qcow2(req, size)
    except (QMPError, OSError, ImgError) as error:
        # Like QEMU, a failed creation does not leave a half-made image behind.
        _remove(req.path)
        if isinstance(error, ImgError):
            raise
        text = error.desc if isinstance(error, QMPError) else os.strerror(error.errno or 5)
        raise ImgError(f"{req.path}: {text}") from None


def _remove(path: str) -> None:
    try:
        if os.path.isfile(path):
            os.unlink(path)
    except OSError:
        pass


def _options_help(fmt: str) -> str:
    lines = [f"Supported options ({fmt}):"]
    lines += [f"  {name:<19}- {text}" for name, text in OPTIONS[fmt].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    opts, args = getopt(argv, "hf:o:b:F:uqp", ["help", "quiet"])
    common, rest = split_common(opts)
    if common.help:
        print(HELP, end="")
        return 0
    fmt, quiet, show_progress = common.fmt or "raw", common.quiet, common.progress
    option_text: list[str] = []
    backing: str | None = None
    backing_fmt: str | None = None
    unsafe = False
    for opt, value in rest:
        if opt == "-o":
            option_text.append(value)
        elif opt == "-b":
            backing = value
        elif opt == "-F":
            backing_fmt = value
        elif opt == "-u":
            unsafe = True
    if fmt not in OPTIONS:
        raise ImgError(f"Unknown file format '{fmt}'")
    joined = ",".join(option_text)
    if joined in ("help", "?"):
        print(_options_help(fmt), end="")
        return 0
    if not args:
        raise usage_error("Expecting image file name")
    if len(args) > 2:
        raise usage_error(f"Unexpected argument: {args[2]}")
    path = args[0]
    options = parse_options(fmt, joined, path)
    if backing is not None:
        if fmt == "raw":
            raise ImgError(f"{path}: Backing file not supported for file format 'raw'")
        options["backing_file"] = backing
    if backing_fmt is not None:
        if fmt == "raw":
            raise ImgError(f"{path}: Invalid parameter 'backing_fmt'")
        options["backing_fmt"] = backing_fmt
    size: int | None = None
    if len(args) == 2:
        if "size" in options:
            raise ImgError(f"{path}: The image size must be specified only once")
        text = args[1]
        try:
            if text.startswith("-"):
                raise ValueError(text)
            size = parse_size(text)
        except ValueError:
            raise ImgError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
                           "vmd-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") from None
    elif "size" in options:
        size = _size_option(options, "size", path, 0)
    if size is not None and size >= 1 << 63:
        raise ImgError("Image size must be less than 8 EiB!")
    req = Request(path, fmt, options, size, unsafe)
    progress = Progress(False if quiet else show_progress)
    run(lambda: create(req, quiet, progress))
    return 0
