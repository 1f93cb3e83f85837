"""Hugging Face transformers' DeepseekV3ForCausalLM training step (forward + backward), timed.

The baseline of `dsv3 bench train-step --device cuda` (docs/benchmarks.md): the same config.json,
random weights and random tokens, BF16 weights and activations (the framework's usual mixed
precision for this model), loss on next-token labels, backward into every parameter. Timed with
CUDA events, median of the timed steps after warm-up. Prints `tokens/s=...` like dsv3.

  python3 bench/hf_train_step.py CONFIG.json [--batch B] [--seq T] [--steps N] [--dtype bf16|fp32]
"""
import argparse
import json
import statistics

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    a = ap.parse_args()

    raw = json.load(open(a.config))
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype", "model_type")}
    cfg = DeepseekV3Config(**raw)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).to(device="cuda", dtype=dtype)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    print(f"transformers {transformers.__version__} torch {torch.__version__} "
          f"attn={model.config._attn_implementation} "
          f"experts={getattr(model.config, '_experts_implementation', 'n/a')} "
          f"params={params / 1e6:.1f}M dtype={a.dtype} batch={a.batch} seq={a.seq}", flush=True)

    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), device="cuda", generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step():
        model.zero_grad(set_to_none=False)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                                 y.view(-1))
        loss.backward()
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for i in range(a.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        loss = step()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
        print(f"step {i + 1}: {times[-1] * 1e3:.1f} ms  loss={loss.item():.4f}", flush=True)
    per_step = statistics.median(times)
    print(f"forward+backward: {per_step * 1e3:.1f} ms/step (median of {a.steps})")
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"tokens/s={a.batch * a.seq / per_step:.1f}")


if __name__ == "__main__":
    main()
