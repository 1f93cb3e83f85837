#!/usr/bin/env python3
"""Causal attention, dsv3's CUDA kernels against PyTorch's scaled_dot_product_attention.

Times forward and forward+backward at the same shapes on one GPU:
  - dsv3: `dsv3 bench attention` (the lse form: ops::attention_forward_lse then
    ops::attention_backward_lse) in float32 (CUDA cores) and bfloat16 (tensor cores; lse and
    gradients float32), median of CUDA-event-timed repeats after a warm-up;
  - PyTorch: F.scaled_dot_product_attention(q, k, v, is_causal=True) in float32 and bfloat16,
    timed the same way (CUDA events around each repeat, median after a warm-up).

FLOPs are the useful causal work, as attention papers count it: forward 2 * B*H*T*T/2 * (dq + dv),
backward 2.5 times the forward (so forward+backward is 3.5 times). Both sides are credited with
the same count at a shape, so the TFLOP/s ratio is the inverse ratio of the times.

Head dims: DeepSeek-V3 has q/k 192 and v 128. SDPA's flash backend needs equal q/k/v head dims,
so by default (--v-mode pad) PyTorch runs with v zero-padded to the q/k dim (the output's padded
columns are zero and their gradient is fed zeros); it is still credited with the dv = 128 work
only, so padding counts against it, as it would in a model that pads. --v-mode native passes
dv = 128 as is (PyTorch then picks a backend that accepts it, or reports it unsupported);
--v-mode both prints both.

Usage (normally through bench/attention_vs_sdpa.sh):
  attention_sdpa.py --dsv3 build/dsv3 [--batch 1,2] [--seq 1024,2048,4096] [--peak-fp32 TF]
                    [--peak-bf16 TF] [--v-mode pad|native|both] [--reps 20] [--warmup 5]
"""
import argparse
import shlex
import statistics
import subprocess
import sys


def parse_ints(s):
    return [int(x) for x in s.split(",") if x]


def run_dsv3(args, batch, seqs, dtype):
    """Runs `dsv3 bench attention --dtype dtype`; returns {seq: (fwd_ms, fwd_bwd_ms)}."""
    cmd = [args.dsv3, "bench", "attention", "--device", args.dsv3_device, "--dtype", dtype,
           "--batch", str(batch),
           "--heads", str(args.heads), "--seq", ",".join(map(str, seqs)),
           "--qk-dim", str(args.qk_dim), "--v-dim", str(args.v_dim),
           "--warmup", str(args.warmup), "--reps", str(args.reps)]
    print("# " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"dsv3 failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    out = run.stdout
    result = {}
    for line in out.splitlines():
        if not line.startswith("attention "):
            continue
        kv = dict(item.split("=", 1) for item in line.split()[1:])
        result[int(kv["seq"])] = (float(kv["fwd_ms"]), float(kv["fwd_bwd_ms"]))
    return result


def cuda_time_ms(torch, fn, warmup, reps):
    """Median milliseconds of fn over `reps` CUDA-event-timed calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def time_sdpa(torch, args, batch, seq, dtype, v_dim):
    """(fwd_ms, fwd_bwd_ms) of SDPA with v of width v_dim (zero-padded past args.v_dim)."""
    F = torch.nn.functional
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(seq)

    def randn(*shape):
        return torch.randn(*shape, device=dev, dtype=torch.float32, generator=gen).to(dtype)

    h, dq, dv = args.heads, args.qk_dim, args.v_dim
    q = randn(batch, h, seq, dq).requires_grad_()
    k = randn(batch, h, seq, dq).requires_grad_()
    v_real = randn(batch, h, seq, dv)
    g_real = randn(batch, h, seq, dv)
    if v_dim > dv:  # zero-padded columns: the same attention on the first dv columns
        pad = torch.zeros(batch, h, seq, v_dim - dv, device=dev, dtype=dtype)
        v = torch.cat([v_real, pad], dim=-1)
        grad = torch.cat([g_real, pad], dim=-1)
    else:
        v, grad = v_real, g_real
    v.requires_grad_()
    scale = 1.0 / dq ** 0.5

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def forward_backward():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        q.grad = k.grad = v.grad = None
        out.backward(grad)

    fwd = cuda_time_ms(torch, forward, args.warmup, args.reps)
    fwd_bwd = cuda_time_ms(torch, forward_backward, args.warmup, args.reps)
    return fwd, fwd_bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--dsv3", default="build/dsv3", help="the dsv3 binary (a CUDA build)")
    ap.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seq", default="1024,2048,4096", help="sequence lengths, comma-separated")
    ap.add_argument("--qk-dim", type=int, default=192)
    ap.add_argument("--v-dim", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--v-mode", choices=["pad", "native", "both"], default="pad",
                    help="how PyTorch gets v when v_dim != qk_dim (see the file comment)")
    ap.add_argument("--peak-fp32", type=float, default=0.0,
                    help="dense float32 peak in TFLOP/s, for a fraction-of-peak column")
    ap.add_argument("--peak-bf16", type=float, default=0.0,
                    help="dense bfloat16 peak in TFLOP/s, for a fraction-of-peak column")
    ap.add_argument("--skip-torch", action="store_true", help="time dsv3 only")
    ap.add_argument("--dsv3-dtypes", default="f32,bf16",
                    help="dsv3 dtypes to time, comma-separated (default f32,bf16)")
    ap.add_argument("--dsv3-device", default="cuda",
                    help="device for dsv3 (cpu only to try the script on a machine without a GPU)")
    args = ap.parse_args()

    batches, seqs = parse_ints(args.batch), parse_ints(args.seq)
    torch = None
    if not args.skip_torch:
        try:
            import torch as torch_module
        except ImportError:
            sys.exit("PyTorch is not installed (pip install torch), or use --skip-torch")
        torch = torch_module
        if not torch.cuda.is_available():
            sys.exit("PyTorch sees no CUDA device")
        print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}, "
              f"allow_tf32 matmul={torch.backends.cuda.matmul.allow_tf32}")

    v_modes = []
    if args.v_dim == args.qk_dim or args.v_mode in ("native", "both"):
        v_modes.append(("", args.v_dim))
    if args.v_dim < args.qk_dim and args.v_mode in ("pad", "both"):
        v_modes.append((f" v->{args.qk_dim}", args.qk_dim))

    def peak_of(dtype):
        return args.peak_bf16 if dtype == "bf16" else args.peak_fp32

    header = (f"{'impl':<22} {'B':>2} {'T':>5} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} "
              f"{'f+b TF/s':>9} {'fwd x':>7} {'f+b x':>7}")
    if args.peak_fp32 or args.peak_bf16:
        header += f" {'fwd %pk':>8} {'f+b %pk':>8}"
    print(f"# H={args.heads} dq={args.qk_dim} dv={args.v_dim}; TF/s = useful causal TFLOP/s; "
          "x = dsv3 TF/s (same dtype as the row) / this row's TF/s (above 1: dsv3 is faster); "
          "%pk = of the dense peak of the row's dtype")
    print(header)
    for batch in batches:
        names = {"f32": "fp32", "bf16": "bf16"}
        dsv3 = {names[dt]: run_dsv3(args, batch, seqs, dt)
                for dt in args.dsv3_dtypes.split(",") if dt}
        for seq in seqs:
            fwd_flops = batch * args.heads * seq * seq * (args.qk_dim + args.v_dim)
            rows = [(f"dsv3 {dt}", dt, runs[seq]) for dt, runs in dsv3.items()]
            if torch is not None:
                for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    for tag, v_dim in v_modes:
                        name = f"sdpa {dtype_name}{tag}"
                        try:
                            rows.append((name, dtype_name,
                                         time_sdpa(torch, args, batch, seq, dtype, v_dim)))
                        except RuntimeError as e:  # no backend for these dims / dtype, OOM
                            first = str(e).strip().splitlines()[0] if str(e).strip() else "error"
                            print(f"{name:<22} {batch:>2} {seq:>5} unsupported: {first[:100]}")
                            torch.cuda.empty_cache()
            first = next(iter(dsv3.values()))[seq]
            for name, dtype_name, (fwd_ms, fb_ms) in rows:
                ref_fwd, ref_fb = dsv3[dtype_name][seq] if dtype_name in dsv3 else first
                fwd_tf = fwd_flops / fwd_ms * 1e-9
                fb_tf = 3.5 * fwd_flops / fb_ms * 1e-9
                line = (f"{name:<22} {batch:>2} {seq:>5} {fwd_ms:>9.3f} {fwd_tf:>9.2f} "
                        f"{fb_ms:>9.3f} {fb_tf:>9.2f} {fwd_ms / ref_fwd:>7.3f} "
                        f"{fb_ms / ref_fb:>7.3f}")
                if args.peak_fp32 or args.peak_bf16:
                    peak = peak_of(dtype_name)
                    line += (f" {100 * fwd_tf / peak:>7.1f}% {100 * fb_tf / peak:>7.1f}%"
                             if peak else f" {'-':>8} {'-':>8}")
                print(line, flush=True)


if __name__ == "__main__":
    main()
