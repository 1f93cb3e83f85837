#!/usr/bin/env python3
"""Loads a dsv3 checkpoint with Hugging Face transformers and checks dsv3 against it.

Needs PyTorch and transformers (DeepseekV3ForCausalLM); dsv3 does not install them. The script
  1. loads CHECKPOINT (a folder `dsv3 train` wrote: config.json, model.safetensors, tokenizer)
     with `DeepseekV3ForCausalLM.from_pretrained` in float32 and reports any checkpoint tensor
     transformers left unused besides the MTP layers (which it does not model) and any model
     tensor it had to initialise;
  2. runs a forward pass on random token ids;
  3. writes a parity fixture (config.json, model.safetensors linked, batch.safetensors, and
     expected.safetensors holding transformers' logits) and runs `dsv3 parity` on it, so the
     comparison and its tolerance (logits max-rel 1e-5) are dsv3's own.

Usage: scripts/check_transformers_load.py CHECKPOINT [--dsv3 build/dsv3] [--batch 2] [--seq 64]
Exit status: 0 when transformers loads every tensor and dsv3's logits match.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import DeepseekV3ForCausalLM
from transformers.utils import logging as hf_logging


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dsv3", default="build/dsv3")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ckpt = os.path.abspath(args.checkpoint)
    with open(os.path.join(ckpt, "config.json")) as f:
        config = json.load(f)
    mtp_prefixes = tuple(
        f"model.layers.{config['num_hidden_layers'] + k}."
        for k in range(config.get("num_nextn_predict_layers", 0)))

    hf_logging.set_verbosity_error()
    model, info = DeepseekV3ForCausalLM.from_pretrained(
        ckpt, dtype=torch.float32, output_loading_info=True)
    model.eval()
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(mtp_prefixes)]
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    print(f"transformers: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"missing {len(missing)}, unexpected (besides MTP) {len(unexpected)}, "
          f"mismatched {len(mismatched)}")
    for name in missing[:10] + unexpected[:10] + [str(m) for m in mismatched[:10]]:
        print(f"  {name}")
    load_ok = not missing and not unexpected and not mismatched

    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config["vocab_size"], (args.batch, args.seq), generator=g,
                           dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float().contiguous()
    labels = torch.full_like(tokens, -1)
    labels[:, :-1] = tokens[:, 1:]

    fixture = tempfile.mkdtemp(prefix="dsv3-transformers-")
    try:
        shutil.copy(os.path.join(ckpt, "config.json"), fixture)
        os.symlink(os.path.join(ckpt, "model.safetensors"),
                   os.path.join(fixture, "model.safetensors"))
        save_file({"tokens": tokens.to(torch.int32).contiguous(),
                   "labels": labels.to(torch.int32).contiguous()},
                  os.path.join(fixture, "batch.safetensors"))
        save_file({"logits": logits}, os.path.join(fixture, "expected.safetensors"))
        run = subprocess.run([args.dsv3, "parity", "--no-decode", fixture])
    finally:
        shutil.rmtree(fixture)
    print("transformers load:", "ok" if load_ok else "FAILED",
          "| logits:", "match" if run.returncode == 0 else "DIFFER")
    return 0 if load_ok and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
