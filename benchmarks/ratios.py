"""Turn a ``portattn bench --json`` file into a markdown table: TFLOP/s and ratios to the anchors."""

from __future__ import annotations

import json
import sys

OURS = ("triton_hopper", "cuda_ampere", "cuda_volta", "portable")


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    points = data["points"]
    impls = list(dict.fromkeys(p["impl"] for p in points))
    ours = [i for i in impls if i.partition(":")[0] in OURS]  # NAME:fp8 is ours too
    anchors = [i for i in impls if i not in ours]
    pairs = [(o, a) for o in ours for a in anchors]
    pairs += [(o, o.partition(":")[0]) for o in ours if ":" in o and o.partition(":")[0] in impls]
    by = {(p["mode"], p["head_dim"], p["seqlen"], p["causal"], p["impl"]): p for p in points}
    shapes = list(dict.fromkeys((p["mode"], p["head_dim"], p["seqlen"], p["causal"]) for p in points))
    meta = data["meta"]
    print(f"Device: {meta['device']}; torch {meta['torch']}; {meta['dtype']}; {meta['date']}")
    print(f"Command: `{meta['command']}`\n")
    head = ["mode", "d", "seqlen", "causal"] + [f"{i} TF/s" for i in impls]
    head += [f"{o}/{a}" for o, a in pairs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mode, d, s, c in shapes:
        row = [mode, str(d), str(s), "yes" if c else "no"]
        tf = {i: (by.get((mode, d, s, c, i)) or {}).get("tflops") for i in impls}
        row += [f"{tf[i]:.0f}" if tf[i] else "n/a" for i in impls]
        row += [f"{tf[o] / tf[a]:.2f}" if tf[o] and tf[a] else "n/a" for o, a in pairs]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
