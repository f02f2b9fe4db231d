"""Write a tiny random-weight checkpoint of a model family, built offline and deterministically.

    python -m model.tiny DIR                       (Qwen2.5-Omni: model/families/qwen2_5_omni/tiny.py)
    python -m model.tiny --family qwen3-omni DIR   (Qwen3-Omni: model/families/qwen3_omni/tiny.py)

Each is its family's released config with every depth kept and every width shrunk, the real token ids and
tokenizer; tests and CPU runs load it through exactly the code path that loads the released checkpoints.
"""

from __future__ import annotations

import argparse
import sys

from model.families import FAMILIES, QWEN2_5_OMNI


def main(argv: list[str] | None = None) -> int:
    families = {family.tiny_family: family for family in FAMILIES.values()}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the checkpoint into")
    parser.add_argument("--family", choices=tuple(families), default=QWEN2_5_OMNI.tiny_family, help="the architecture")
    args = parser.parse_args(argv)
    family = families[args.family]
    out = family.build_tiny(args.out_dir)
    print(f"tiny {family.name} checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
