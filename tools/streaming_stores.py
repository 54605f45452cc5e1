#!/usr/bin/env python3
"""Compiles a Halide pipeline's LLVM bitcode to an object with the vector stores to its tensor
output marked non-temporal (streaming stores, no read for ownership).

Halide 21 has no streaming-store directive (upstream added stream_stores() after it). Its
generator can emit the optimized module as bitcode; this marks the output's vector stores with
LLVM's !nontemporal and their alignment (x86 streaming stores need the vector aligned; the
generator's streaming_stores build adds a run-time check that it is), then compiles the module
with llvmlite's LLVM, which reads the older bitcode (LLVM keeps bitcode readable by newer
releases). Nothing else changes: same functions, same code but for those stores.

Halide tags every load and store with type-based alias metadata naming its buffer
(!{!"y$1", !"Halide buffer"...}); the stores to the output are the ones whose tag names it.

Usage: streaming_stores.py <in.bc> <out.o> <output buffer name>
"""
import re
import sys

import llvmlite.binding as llvm

ELEMENT_BYTES = {"float": 4, "double": 8, "half": 2, "bfloat": 2, "i16": 2, "i32": 4}


def mark_nontemporal(ir: str, output: str):
    """The module's text with the output's vector stores non-temporal, and how many."""
    buffer_nodes = {
        m.group(1)
        for m in re.finditer(r'^!(\d+) = !\{!"([^"]+)", !\d+, i64 0\}$', ir, re.M)
        if re.sub(r"\$\d+$", "", m.group(2)) == output
    }
    tags = {
        m.group(1)
        for m in re.finditer(r"^!(\d+) = !\{!(\d+), !\d+, i64 0\}$", ir, re.M)
        if m.group(2) in buffer_nodes
    }
    nontemporal = max(int(i) for i in re.findall(r"^!(\d+) = ", ir, re.M)) + 1
    count = 0

    def mark(m):
        nonlocal count
        lanes, element, value, pointer, tag = m.groups()
        if tag not in tags:
            return m.group(0)
        count += 1
        # The vector's own size, at most a line: what the generator's check guarantees.
        align = min(int(lanes) * ELEMENT_BYTES[element], 64)
        vector = f"<{lanes} x {element}>"
        prefix = ""
        if ELEMENT_BYTES[element] == 2:
            # 16-bit outputs are narrowed from 32-bit lanes, and LLVM folds the narrowing into
            # the store (vpmovdw to memory), which has no streaming form: the !nontemporal is
            # then dropped. An empty inline asm keeps the narrowed vector in a register.
            prefix = (f'%nt.{count} = call {vector} asm "", "=v,0"({vector} {value})\n  ')
            value = f"%nt.{count}"
        return (f"{prefix}store {vector} {value}, ptr {pointer}, align {align}, "
                f"!tbaa !{tag}, !nontemporal !{nontemporal}")

    elements = "|".join(ELEMENT_BYTES)
    ir = re.sub(rf"store <(\d+) x ({elements})> (%[^,]+), ptr (%[^,]+), align \d+, !tbaa !(\d+)",
                mark, ir)
    return ir + f"\n!{nontemporal} = !{{i32 1}}\n", count


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    bitcode, obj, output = sys.argv[1:]
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    with open(bitcode, "rb") as f:
        module = llvm.parse_bitcode(f.read())
    ir, count = mark_nontemporal(str(module), output)
    if count == 0:
        # A renamed output or a changed tag format: fail rather than build a kernel that
        # silently streams nothing.
        sys.exit(f"streaming_stores.py: no vector store to '{output}' in {bitcode}")
    module = llvm.parse_assembly(ir)
    module.verify()
    # Halide's x86 objects are position independent; target CPU and features are attributes
    # of each function in the module.
    machine = llvm.Target.from_triple(module.triple).create_target_machine(
        opt=3, reloc="pic", codemodel="default")
    # Every marked store must come out as a streaming store: LLVM drops !nontemporal where no
    # streaming instruction fits (as it did for 16-bit outputs before the barrier above).
    streamed = machine.emit_assembly(module).count("\tvmovnt")
    if streamed < count:
        sys.exit(f"streaming_stores.py: {count} stores marked in {bitcode}, "
                 f"{streamed} streaming stores emitted")
    with open(obj, "wb") as f:
        f.write(machine.emit_object(module))


if __name__ == "__main__":
    main()
