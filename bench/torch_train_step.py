"""Time one DeepSeek-V3 training step (forward + backward, all loss terms) in PyTorch eager.

Usage: python3 bench/torch_train_step.py --config FILE --batch B --seq T --threads N
                                         [--steps S] [--warmup W] [--seed K]

The PyTorch side of `dsv3 bench train-step`: the same step in float32 on random weights (std
0.006) and random tokens, with N threads. Prints a header naming the torch version and the BLAS
actually loaded, one line per timed step (forward, backward, total), and a last line containing
`tokens/s=<number>` (B*T / mean step time over the timed steps).
"""

import argparse
import os
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas", choices=("openmp", "system"), default="openmp",
                    help="openmp (default): load the OpenMP build of OpenBLAS (libopenblas0-openmp), "
                         "which shares torch's OpenMP threads; system: whatever libblas.so.3 "
                         "Debian's alternatives select (the pthread build oversubscribes the cores)")
    return ap.parse_args()


def loaded_blas():
    """The BLAS shared objects this process has mapped, resolved through Debian's alternatives."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            base = os.path.basename(path)
            if "blas" in base or "mkl" in base or "dnnl" in base:
                libs.add(os.path.realpath(path))
    return sorted(libs)


OPENBLAS_OPENMP_DIR = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


def use_openmp_openblas():
    """Re-run this script with the OpenMP OpenBLAS first on the loader path (ld.so reads
    LD_LIBRARY_PATH only at start-up). Torch's libblas.so.3 then resolves to it."""
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if paths[:1] == [OPENBLAS_OPENMP_DIR]:
        return
    if not os.path.exists(os.path.join(OPENBLAS_OPENMP_DIR, "libblas.so.3")):
        sys.exit(f"error: {OPENBLAS_OPENMP_DIR}/libblas.so.3 not found: "
                 "install libopenblas0-openmp, or pass --blas system")
    os.environ["LD_LIBRARY_PATH"] = ":".join([OPENBLAS_OPENMP_DIR] + paths)
    os.execv(sys.executable, [sys.executable] + sys.argv)


def main():
    args = parse_args()
    if args.blas == "openmp":
        use_openmp_openblas()
    # Thread counts must be fixed before torch (and the BLAS it loads) starts its pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_model import Config, DeepseekV3ForCausalLM

    torch.set_num_threads(args.threads)
    cfg = Config.load(args.config)
    gen = torch.Generator().manual_seed(args.seed)
    model = DeepseekV3ForCausalLM(cfg)
    model.init_weights(std=0.006, generator=gen)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    B, T = args.batch, args.seq
    blas = ", ".join(loaded_blas()) or "none found"
    print(f"torch {torch.__version__} float32, threads={torch.get_num_threads()}, BLAS: {blas}")
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the cores distorts the timing)")
    print(f"config {args.config}: {n_params / 1e6:.2f}M parameters, batch {B} x seq {T}, "
          f"MTP depths {cfg.num_nextn_predict_layers or 0}, lambda {cfg.mtp_lambda}, "
          f"alpha {cfg.balance_alpha}")

    fwd_times, bwd_times = [], []
    for step in range(args.warmup + args.steps):
        window = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen)
        tokens, labels = window[:, :T], window[:, 1:]
        for p in model.parameters():
            p.grad = None
        t0 = time.perf_counter()
        out = model(tokens, labels)
        t1 = time.perf_counter()
        out["loss.total"].backward()
        t2 = time.perf_counter()
        timed = step >= args.warmup
        if timed:
            fwd_times.append(t1 - t0)
            bwd_times.append(t2 - t1)
        print(f"{'step' if timed else 'warmup'} {step - args.warmup if timed else step}: "
              f"loss {out['loss.total'].item():.4f}  forward {1e3 * (t1 - t0):.1f} ms  "
              f"backward {1e3 * (t2 - t1):.1f} ms  total {1e3 * (t2 - t0):.1f} ms")

    fwd = sum(fwd_times) / len(fwd_times)
    bwd = sum(bwd_times) / len(bwd_times)
    step_s = fwd + bwd
    print(f"mean over {len(fwd_times)} steps: forward {1e3 * fwd:.1f} ms ({B * T / fwd:.0f} tokens/s), "
          f"backward {1e3 * bwd:.1f} ms, step {1e3 * step_s:.1f} ms")
    totals = sorted(f + b for f, b in zip(fwd_times, bwd_times))
    med = totals[len(totals) // 2]
    print(f"median step {1e3 * med:.1f} ms ({B * T / med:.1f} tokens/s), fastest "
          f"{1e3 * totals[0]:.1f} ms, slowest {1e3 * totals[-1]:.1f} ms; "
          f"load average {os.getloadavg()[0]:.2f} at end")
    print(f"pytorch train-step: batch={B} seq={T} threads={args.threads} "
          f"step_ms={1e3 * step_s:.1f} tokens/s={B * T / step_s:.1f}")


if __name__ == "__main__":
    main()
