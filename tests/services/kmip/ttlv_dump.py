"""Pretty-print KMIP TTLV bytes (hex on stdin / in a file) as an indented tree.

    python ttlv_dump.py FILE.hex        # or: ... | python ttlv_dump.py -

Standalone (no PyKMIP needed); uses PyKMIP's enums for names when importable.
TTLV: 3-byte tag, 1-byte type, 4-byte big-endian length, value padded to 8 bytes
(Integer/Enumeration: 4-byte value + 4 pad; Long/DateTime/Interval-less: 8; Boolean: 8;
Text/Byte String: length bytes + pad to a multiple of 8; Interval: 4 + 4 pad).
"""
import datetime
import struct
import sys

TYPES = {
    0x01: "Structure", 0x02: "Integer", 0x03: "LongInteger", 0x04: "BigInteger",
    0x05: "Enumeration", 0x06: "Boolean", 0x07: "TextString", 0x08: "ByteString",
    0x09: "DateTime", 0x0A: "Interval",
}

try:
    from kmip.core import enums as _e

    TAG_NAMES = {t.value: t.name for t in _e.Tags}
    ENUM_FOR_TAG = {
        "OPERATION": _e.Operation,
        "OBJECT_TYPE": _e.ObjectType,
        "RESULT_STATUS": _e.ResultStatus,
        "RESULT_REASON": _e.ResultReason,
        "CRYPTOGRAPHIC_ALGORITHM": _e.CryptographicAlgorithm,
        "BLOCK_CIPHER_MODE": _e.BlockCipherMode,
        "PADDING_METHOD": _e.PaddingMethod,
        "STATE": _e.State,
        "NAME_TYPE": _e.NameType,
        "QUERY_FUNCTION": _e.QueryFunction,
        "KEY_FORMAT_TYPE": _e.KeyFormatType,
        "REVOCATION_REASON_CODE": _e.RevocationReasonCode,
    }
    USAGE_MASK = {m.value: m.name for m in _e.CryptographicUsageMask}
except Exception:  # pragma: no cover - works without PyKMIP too
    TAG_NAMES, ENUM_FOR_TAG, USAGE_MASK = {}, {}, {}


def _pad8(n):
    return (n + 7) // 8 * 8


def dump(buf, out, indent=0, offset=0):
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < 8:
            out.append("  " * indent + "!! trailing %d bytes: %s" % (len(buf) - pos, buf[pos:].hex()))
            return
        tag = int.from_bytes(buf[pos:pos + 3], "big")
        typ = buf[pos + 3]
        length = struct.unpack(">I", buf[pos + 4:pos + 8])[0]
        name = TAG_NAMES.get(tag, "?")
        tname = TYPES.get(typ, "type%02x" % typ)
        value = buf[pos + 8:pos + 8 + length]
        prefix = "%s@%04x %06x %-28s %-11s len=%-4d" % ("  " * indent, offset + pos, tag, name, tname, length)
        if typ == 0x01:
            out.append(prefix)
            dump(value, out, indent + 1, offset + pos + 8)
            pos += 8 + length
            continue
        if typ in (0x02, 0x05):
            v = struct.unpack(">I", value)[0]
            extra = ""
            if typ == 0x05 and name in ENUM_FOR_TAG:
                try:
                    extra = " (%s)" % ENUM_FOR_TAG[name](v).name
                except ValueError:
                    pass
            if name == "CRYPTOGRAPHIC_USAGE_MASK":
                extra = " (%s)" % "|".join(n for b, n in USAGE_MASK.items() if v & b)
            desc = "0x%08x = %d%s" % (v, v, extra)
            size = 8
        elif typ == 0x0A:
            desc = "%d s" % struct.unpack(">I", value)[0]
            size = 8
        elif typ in (0x03, 0x09):
            v = struct.unpack(">q", value)[0]
            desc = "%d" % v
            if typ == 0x09:
                desc += " (%s)" % datetime.datetime.fromtimestamp(v, datetime.timezone.utc).isoformat()
            size = 8
        elif typ == 0x06:
            desc = "true" if int.from_bytes(value, "big") else "false"
            size = 8
        elif typ == 0x07:
            desc = repr(value.decode("utf-8", "replace"))
            size = _pad8(length)
        else:
            desc = value.hex()
            size = _pad8(length)
        out.append(prefix + " " + desc)
        pos += 8 + size


def render(data):
    out = []
    dump(data, out)
    return "\n".join(out) + "\n"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "-"
    text = sys.stdin.read() if src == "-" else open(src).read()
    data = bytes.fromhex("".join(text.split()))
    sys.stdout.write(render(data))


if __name__ == "__main__":
    main()
