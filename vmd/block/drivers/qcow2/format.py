"""The qcow2 on-disk format, as pure functions and records (no I/O).

All integers on disk are big-endian. A header is 72 bytes (version 2) or
``header_length`` bytes (version 3, at least 104); header extensions follow
it as ``{u32 type, u32 length, data padded to 8}`` records ended by type 0,
and the backing file name (not NUL-terminated) sits after them, still in
cluster 0. Unknown extensions are kept and written back unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmd.errors import QMPError

MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

#: QEMU's QCOW_MAX_L1_SIZE and QCOW_MAX_REFTABLE_SIZE (bytes) and QCOW_MAX_SNAPSHOTS:
#: images beyond them are refused before a table is read or grown.
MAX_L1_ENTRIES = (32 << 20) // 8
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
#: Autoclear bit 0: the bitmaps extension is consistent.
AUTOCLEAR_BITMAPS = 1 << 0
#: QEMU's QCOW2_MAX_BITMAPS and QCOW2_MAX_BITMAP_DIRECTORY_SIZE.
MAX_BITMAPS = 65535
MAX_BITMAP_DIRECTORY = 1024 * MAX_BITMAPS

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
#: Incompatible features this driver understands (others refuse to open).
INCOMPAT_SUPPORTED = INCOMPAT_DIRTY | INCOMPAT_CORRUPT
COMPAT_LAZY_REFCOUNTS = 1 << 0

#: The feature name table qemu-img writes into version 3 images.
FEATURE_NAMES: tuple[tuple[int, int, str], ...] = (
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
)

# L1/L2 entries.
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

# Header field offsets used for in-place updates.
OFF_SIZE = 24
OFF_L1 = 36            # u32 l1_size then u64 l1_table_offset
OFF_REFTABLE = 48      # u64 refcount_table_offset then u32 clusters
OFF_INCOMPAT = 72

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3 = struct.Struct(">QQQII")
_BITMAPS_EXT = struct.Struct(">IIQQ")   # nb_bitmaps, reserved, directory size, directory offset


def _err(text: str) -> QMPError:
    return QMPError(text)


@dataclass
class Header:
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = 112
    compression_type: int = 0
    #: Header bytes past the fields we know (kept verbatim).
    extra_fields: bytes = b""
    #: Header extensions other than those this module models.
    unknown_extensions: list[tuple[int, bytes]] = field(default_factory=list)
    backing_file: str | None = None
    backing_format: str | None = None
    #: The bitmaps extension (``vmd.block.drivers.qcow2.bitmaps``); 0 bitmaps: none.
    nb_bitmaps: int = 0
    bitmap_directory_size: int = 0
    bitmap_directory_offset: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    def pack_fields(self) -> bytes:
        """The fixed header fields (72 bytes for v2, header_length for v3)."""
        base = _V2.pack(MAGIC, self.version, self.backing_file_offset, self.backing_file_size,
                        self.cluster_bits, self.size, self.crypt_method, self.l1_size,
                        self.l1_table_offset, self.refcount_table_offset,
                        self.refcount_table_clusters, self.nb_snapshots, self.snapshots_offset)
        if self.version == 2:
            return base
        v3 = _V3.pack(self.incompatible_features, self.compatible_features,
                      self.autoclear_features, self.refcount_order, self.header_length)
        tail = b""
        if self.header_length > 104:
            tail = bytes([self.compression_type]) + self.extra_fields
            tail = tail.ljust(self.header_length - 104, b"\0")[:self.header_length - 104]
        return base + v3 + tail

    def pack(self) -> bytes:
        """Header, extensions, end marker and backing name (updates offsets)."""
        exts: list[tuple[int, bytes]] = []
        if self.backing_format:
            exts.append((EXT_BACKING_FORMAT, self.backing_format.encode()))
        exts.extend(self.unknown_extensions)
        header_len = 72 if self.version == 2 else self.header_length
        if self.version >= 3:
            table = b"".join(struct.pack(">BB46s", kind, bit, name.encode())
                             for kind, bit, name in FEATURE_NAMES)
            used = header_len + sum(8 + len(d) + (-len(d) % 8) for _, d in exts)
            # Like qemu-img 7.2 (observed): no table with clusters under 8 KiB.
            fits = used + 8 + len(table) + 8 + len((self.backing_file or "").encode()) < self.cluster_size
            if fits and self.cluster_size >= 8192:
                exts.insert(1 if self.backing_format else 0, (EXT_FEATURE_TABLE, table))
        if self.nb_bitmaps:
            # After the feature table, before unknown extensions, as QEMU.
            exts.insert(len(exts) - len(self.unknown_extensions), (EXT_BITMAPS, _BITMAPS_EXT.pack(
                self.nb_bitmaps, 0, self.bitmap_directory_size, self.bitmap_directory_offset)))
        body = bytearray()
        for kind, data in exts:
            body += struct.pack(">II", kind, len(data)) + data
            body += bytes(-len(data) % 8)
        body += struct.pack(">II", EXT_END, 0)
        if self.backing_file:
            name = self.backing_file.encode()
            self.backing_file_offset = header_len + len(body)
            self.backing_file_size = len(name)
            body += name
        else:
            self.backing_file_offset = 0
            self.backing_file_size = 0
        out = self.pack_fields() + bytes(body)
        if len(out) > self.cluster_size:
            raise _err("Header extensions do not fit in the first cluster")
        return out


def parse_header(buf: bytes, file_size: int) -> Header:
    """Parse cluster 0 (``buf`` holds at least its first cluster, or the file)."""
    if len(buf) < 72 or buf[:4] != MAGIC:
        raise _err("Image is not in qcow2 format")
    (_, version, bfo, bfs, cluster_bits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
     nb_snap, snap_off) = _V2.unpack_from(buf, 0)
    if version < 2 or version > 3:
        raise _err(f"Unsupported qcow2 version {version}")
    if cluster_bits < MIN_CLUSTER_BITS or cluster_bits > MAX_CLUSTER_BITS:
        raise _err(f"Unsupported cluster size: 2^{cluster_bits}")
    h = Header(version=version, backing_file_offset=bfo, backing_file_size=bfs,
               cluster_bits=cluster_bits, size=size, crypt_method=crypt, l1_size=l1_size,
               l1_table_offset=l1_off, refcount_table_offset=rt_off,
               refcount_table_clusters=rt_clusters, nb_snapshots=nb_snap, snapshots_offset=snap_off)
    cs = h.cluster_size
    if version == 2:
        h.header_length = 72
        h.refcount_order = 4
    else:
        if len(buf) < 104:
            raise _err("qcow2 header too short")
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = _V3.unpack_from(buf, 72)
        if h.header_length < 104:
            raise _err("qcow2 header too short")
    if h.header_length > cs:
        raise _err("qcow2 header exceeds cluster size")
    if len(buf) < h.header_length:
        raise _err("Could not read qcow2 header: unexpected end of file")
    if h.header_length > 104:
        h.compression_type = buf[104]
        h.extra_fields = bytes(buf[105:h.header_length])
    if bfo > cs:
        raise _err("Invalid backing file offset")
    if h.compression_type != 0:
        raise _err(f"qcow2: unknown compression type: {h.compression_type}")
    _parse_extensions(h, buf, bfo if bfo else min(cs, len(buf)))
    unknown = h.incompatible_features & ~INCOMPAT_SUPPORTED
    if unknown:
        raise _err(f"Unsupported qcow2 feature(s): {_feature_text(unknown)}")
    if h.refcount_order > 6:
        raise _err("Reference count entry width too large; may not exceed 64 bits")
    if h.crypt_method:
        raise _err(f"Unsupported encryption method {h.crypt_method}")
    if h.refcount_table_clusters == 0:
        raise _err("Image does not contain a reference count table")
    if h.refcount_table_clusters > MAX_REFTABLE_BYTES >> cluster_bits:
        raise _err("Reference count table too large")
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise _err("Snapshot table too large")
    if h.l1_size > MAX_L1_ENTRIES:
        raise _err("Active L1 table too large")
    _validate_table(cs, file_size, h.refcount_table_offset, h.refcount_table_clusters * cs,
                    "Reference count table")
    if h.nb_snapshots:
        _validate_table(cs, file_size, h.snapshots_offset, 0, "Snapshot table")
    _validate_table(cs, file_size, h.l1_table_offset, h.l1_size * 8, "Active L1 table")
    needed = l1_entries_for(size, cs)
    if needed > 0x7FFFFFFF:
        raise _err("Image is too big")
    if h.l1_size < needed:
        raise _err("L1 table is too small")
    if bfo:
        if bfs > 1023 or bfo + bfs > len(buf):
            raise _err("Backing file name too long")
        h.backing_file = bytes(buf[bfo:bfo + bfs]).decode("utf-8", "replace")
    return h


def parse_bitmaps_extension(data: bytes) -> tuple[int, int, int]:
    """(nb_bitmaps, directory size, directory offset), with QEMU's checks
    (the cluster alignment of the offset is checked by the caller)."""
    if len(data) != _BITMAPS_EXT.size:
        raise QMPError("bitmaps_ext: Invalid extension length")
    nb, reserved, size, offset = _BITMAPS_EXT.unpack(data)
    if reserved:
        raise QMPError("bitmaps_ext: Reserved field is not zero")
    if nb > MAX_BITMAPS:
        raise QMPError(f"bitmaps_ext: Image has {nb} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}")
    if nb == 0:
        raise QMPError("found bitmaps extension with zero bitmaps")
    if size > MAX_BITMAP_DIRECTORY:
        raise QMPError(f"bitmaps_ext: bitmap directory size ({size}) exceeds the maximum supported size "
                       f"({MAX_BITMAP_DIRECTORY})")
    return nb, size, offset


def l1_entries_for(size: int, cluster_size: int) -> int:
    """L1 entries an image of ``size`` bytes needs (QEMU's size_to_l1)."""
    return -(-size // (cluster_size * (cluster_size // 8)))


def _feature_text(bits: int) -> str:
    names = {(kind, bit): name for kind, bit, name in FEATURE_NAMES}
    parts = []
    for bit in range(64):
        if bits & (1 << bit):
            known = names.get((0, bit))
            parts.append(known if known else f"Unknown incompatible feature: {1 << bit:x}")
    return ", ".join(parts)


def _validate_table(cs: int, file_size: int, offset: int, length: int, name: str) -> None:
    """Tables are cluster aligned and inside the file (QEMU's qcow2_validate_table)."""
    if offset % cs or (length and (offset == 0 or offset + length > file_size)):
        raise _err(f"{name} offset invalid")


def _parse_extensions(h: Header, buf: bytes, end: int) -> None:
    pos = h.header_length
    while pos + 8 <= end:
        kind, length = struct.unpack_from(">II", buf, pos)
        pos += 8
        if kind == EXT_END:
            return
        if pos + length > end:
            raise _err("ext_magic: header extension too large")
        data = bytes(buf[pos:pos + length])
        if kind == EXT_BACKING_FORMAT:
            if length >= 16:
                raise _err(f"ERROR: ext_backing_format: len={length} too large (>=16)")
            h.backing_format = data.decode("utf-8", "replace")
        elif kind == EXT_FEATURE_TABLE:
            pass  # regenerated on write
        elif kind == EXT_BITMAPS:
            # Ignored (and dropped on the next header write) unless the
            # autoclear bit says no program without bitmaps wrote since.
            if h.autoclear_features & AUTOCLEAR_BITMAPS:
                h.nb_bitmaps, h.bitmap_directory_size, h.bitmap_directory_offset = parse_bitmaps_extension(data)
        else:
            h.unknown_extensions.append((kind, data))
        pos += length + (-length % 8)


# -- refcount entries ----------------------------------------------------------

def get_refcount(block: bytes | bytearray, index: int, order: int) -> int:
    bits = 1 << order
    if bits >= 8:
        width = bits // 8
        return int.from_bytes(block[index * width:(index + 1) * width], "big")
    pos = index * bits
    return (block[pos // 8] >> (pos % 8)) & ((1 << bits) - 1)


def set_refcount(block: bytearray, index: int, order: int, value: int) -> None:
    bits = 1 << order
    if value < 0 or value >= (1 << bits):
        raise _err("Reference count overflow")
    if bits >= 8:
        width = bits // 8
        block[index * width:(index + 1) * width] = value.to_bytes(width, "big")
        return
    pos = index * bits
    mask = ((1 << bits) - 1) << (pos % 8)
    block[pos // 8] = (block[pos // 8] & ~mask & 0xFF) | (value << (pos % 8))


# -- compressed clusters -------------------------------------------------------

def compressed_range(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host byte offset, byte count to read) of a compressed cluster descriptor."""
    shift = 62 - (cluster_bits - 8)
    offset = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1
    return offset, sectors * 512 - (offset & 511)


def compressed_clusters(entry: int, cluster_bits: int) -> range:
    """Host cluster indexes a compressed descriptor's 512-byte sectors touch."""
    shift = 62 - (cluster_bits - 8)
    offset = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1
    first = offset & ~511
    last = first + sectors * 512 - 1
    return range(first >> cluster_bits, (last >> cluster_bits) + 1)
