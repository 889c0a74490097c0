"""Write the small demo BTFM checkpoint (random, untrained weights) for exercising the pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from btfm_infer.checkpoint import save_checkpoint
from btfm_infer.model import BTFM, DEMO

MODEL_CARD = (
    "BTFM demo checkpoint. Randomly initialised, UNTRAINED weights of the small demo size "
    f"(d_model {DEMO.d_model}, {DEMO.nhead} heads, {DEMO.num_layers} layers, FFN {DEMO.dim_feedforward}), "
    "for exercising the pipeline only. Its embeddings are random projections of the inputs, not "
    "learned features: do not use them for analysis. The official TESSERA weights "
    "(best_model_fsdp_20250427_084307.pt) load with btfm_infer.load_model / --checkpoint."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("checkpoints/btfm_demo.pt"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = BTFM(DEMO).eval()
    path = save_checkpoint(model, args.out, config=DEMO, model_card=MODEL_CARD,
                           extra={"seed": args.seed, "trained": False})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
