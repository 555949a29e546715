"""Rewrites CUDA kernel sources so that g++ can compile them against cuda_host.h (the host emulator).

    python hostify.py SRC_DIR DST_DIR

Copies every .cu/.cuh/.h file of SRC_DIR (csrc/cuda) to DST_DIR with two rewrites, keeping line
numbers (and a #line directive, so diagnostics name the original file):
  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ::fastdiff::cuda::emu::launch(kernel, ::fastdiff::cuda::emu::Config(grid, block, ...), args)
  extern __shared__ [__align__(n)] T name[];
      -> T* const name = ::fastdiff::cuda::emu::dynamic_smem<T>();
Anything it cannot parse is an error, not a silent pass-through.
"""

import re
import sys
from pathlib import Path

EMU = "::fastdiff::cuda::emu::"
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
IDENT = re.compile(r"[\w:]")


def _match_back(text: str, end: int, close: str, open_: str) -> int:
    """Index of the `open_` that balances the `close` at text[end]."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] == close:
            depth += 1
        elif text[i] == open_:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {close!r}")


def _match_forward(text: str, start: int) -> int:
    """Index of the ')' that balances the '(' at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced '('")


def rewrite_launches(text: str, name: str) -> str:
    out = text
    while (lt := out.find("<<<")) >= 0:
        gt = out.find(">>>", lt)
        paren = gt + 3
        while paren < len(out) and out[paren].isspace():
            paren += 1
        if gt < 0 or paren >= len(out) or out[paren] != "(":
            raise ValueError(f"{name}: cannot parse the launch at offset {lt}")
        # The kernel expression: an identifier path, optionally with template arguments.
        k = lt
        while k > 0 and out[k - 1].isspace():
            k -= 1
        if out[k - 1] == ">":
            k = _match_back(out, k - 1, ">", "<")
        while k > 0 and IDENT.match(out[k - 1]):
            k -= 1
        kernel = out[k:lt].strip()
        if not kernel:
            raise ValueError(f"{name}: no kernel name before the launch at offset {lt}")
        close = _match_forward(out, paren)
        config = out[lt + 3 : gt]
        args = out[paren + 1 : close]
        call = f"{EMU}launch({kernel}, {EMU}Config({config})" + (f", {args})" if args.strip() else ")")
        out = out[:k] + call + out[close + 1 :]
    return out


def hostify(text: str, name: str) -> str:
    text = EXTERN_SHARED.sub(lambda m: f"{m[1]}* const {m[2]} = {EMU}dynamic_smem<{m[1]}>();", text)
    text = rewrite_launches(text, name)
    if "extern __shared__" in text:
        raise ValueError(f"{name}: an extern __shared__ declaration was not rewritten")
    return text


def main(src: str, dst: str) -> None:
    src_dir, dst_dir = Path(src).resolve(), Path(dst)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.iterdir()):
        if f.suffix not in {".cu", ".cuh", ".h"}:
            continue
        body = hostify(f.read_text(), f.name)
        target = dst_dir / f.name
        new = f'#line 1 "{f}"\n{body}'
        if not target.exists() or target.read_text() != new:  # unchanged files keep their timestamps
            target.write_text(new)


if __name__ == "__main__":
    main(*sys.argv[1:])
