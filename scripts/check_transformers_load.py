#!/usr/bin/env python3
"""Loads a dsv3 checkpoint with Hugging Face transformers and checks dsv3 against it.

Needs PyTorch and transformers (DeepseekV3ForCausalLM); dsv3 does not install them. The script
  1. loads CHECKPOINT (a folder `dsv3 train` wrote: config.json, model.safetensors, tokenizer)
     with `DeepseekV3ForCausalLM.from_pretrained` in float32 and reports any checkpoint tensor
     transformers left unused besides the MTP layers (which it does not model) and any model
     tensor it had to initialise; where transformers fuses each layer's experts on load
     (version 5), checks every expert's slice against that expert's matrices in the file;
  2. runs a forward pass on random token ids with eager attention, recording each MoE layer's
     chosen experts where the router module returns them;
  3. writes a parity fixture (config.json, model.safetensors linked, batch.safetensors, and
     expected.safetensors holding transformers' logits and chosen experts) and runs
     `dsv3 parity` on it, so the comparison and its tolerances (logits max-rel 1e-5, routing
     exact) are dsv3's own.

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
from safetensors.torch import load_file, save_file
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

    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    hf_logging.set_verbosity_error()
    try:
        # Eager attention: the reference computation, not a fused kernel's.
        model, info = DeepseekV3ForCausalLM.from_pretrained(
            ckpt, dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
    except Exception as e:  # a shape mismatch raises inside from_pretrained in recent versions
        print(f"transformers load: FAILED ({type(e).__name__}: {e})")
        return 1
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
    load_ok &= check_fused_experts(model, ckpt, config)

    # Each MoE layer's chosen experts, for `dsv3 parity` to compare exactly (a near-tie routed
    # differently then shows as a routing difference, not as an unexplained logits error).
    chosen = {}

    def keep_indices(layer):
        def hook(_module, _inputs, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            for o in outs:
                if torch.is_tensor(o) and not o.is_floating_point() and o.dim() == 2:
                    chosen[layer] = o.detach()
        return hook

    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            gate.register_forward_hook(keep_indices(i))

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
        expected = {"logits": logits}
        for layer, idx in chosen.items():  # ascending ids per token, as dsv3 keeps them
            expected[f"routing.{layer}.indices"] = idx.sort(dim=-1).values.to(torch.int32).contiguous()
        print(f"routing: {len(chosen)} MoE layers' chosen experts recorded")
        save_file(expected, os.path.join(fixture, "expected.safetensors"))
        run = subprocess.run([args.dsv3, "parity", "--no-decode", fixture])
    finally:
        shutil.rmtree(fixture)
    print("transformers load:", "ok" if load_ok else "FAILED",
          "| logits:", "match" if run.returncode == 0 else "DIFFER")
    return 0 if load_ok and run.returncode == 0 else 1


def same_matrix(got, want):
    """got equals want exactly, as stored or transposed (the fused layout differs by version)."""
    return any(g.shape == want.shape and torch.equal(g.float(), want.float())
               for g in (got, got.T))


def check_fused_experts(model, ckpt, config):
    """transformers 5 fuses each layer's experts on load (gate_up_proj [E, 2I, D], down_proj
    [E, D, I]): check that expert e's slices are that expert's matrices from the file."""
    tensors = load_file(os.path.join(ckpt, "model.safetensors"))
    ok = True
    for i, layer in enumerate(model.model.layers):
        experts = getattr(layer.mlp, "experts", None)
        gate_up = getattr(experts, "gate_up_proj", None)
        if gate_up is None:
            continue  # per-expert modules (transformers 4): the key check above covers them
        down = experts.down_proj
        for e in range(config["n_routed_experts"]):
            p = f"model.layers.{i}.mlp.experts.{e}."
            want_gu = torch.cat([tensors[p + "gate_proj.weight"], tensors[p + "up_proj.weight"]])
            want_d = tensors[p + "down_proj.weight"]
            if not (same_matrix(gate_up[e].detach(), want_gu) and
                    same_matrix(down[e].detach(), want_d)):
                print(f"  layer {i} expert {e}: fused weights differ from the file's")
                ok = False
    print("fused experts:", "match the file" if ok else "DIFFER")
    return ok


if __name__ == "__main__":
    sys.exit(main())
