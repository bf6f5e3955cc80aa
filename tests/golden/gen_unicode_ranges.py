#!/usr/bin/env python3
"""Prints the C tables of Unicode letter (L*) and number (N*) code point ranges that the
tokenizer section of sgllm_impl.c embeds (paste between the BEGIN/END markers there).

Run with a Python whose unicodedata is Unicode 15.1 (Python 3.13), the version llama.cpp's
tables were generated from:  python3.13 tests/golden/gen_unicode_ranges.py
"""
import sys
import unicodedata


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        hit = pred(unicodedata.category(chr(cp)))
        if hit and start is None:
            start = cp
        elif not hit and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def emit(name, rs):
    print(f"// {len(rs)} ranges, Unicode {unicodedata.unidata_version}")
    print(f"static const uint32_t {name}[][2] = {{")
    line = "   "
    for lo, hi in rs:
        item = f" {{0x{lo:X}, 0x{hi:X}}},"
        if len(line) + len(item) > 100:
            print(line)
            line = "   "
        line += item
    print(line)
    print("};")


if __name__ == "__main__":
    if unicodedata.unidata_version != "15.1.0":
        sys.stderr.write(f"warning: unicodedata is {unicodedata.unidata_version}, not 15.1.0\n")
    emit("sgllm__uni_letters", ranges(lambda c: c[0] == "L"))
    emit("sgllm__uni_numbers", ranges(lambda c: c[0] == "N"))
