"""Check the PyTorch baseline (torch_model.py) against the reference fixtures.

Usage: python3 bench/torch_parity.py [FIXTURE_DIR ...]
       (default: tests/data/reference/tiny-v3 and tiny-v2lite)

Runs each fixture in float64 and in float32 and compares logits, MTP logits, losses, routing and
every gradient with expected.safetensors. Logits/losses: max|diff|/max|ref|; gradients:
||diff||/||ref||. Exits non-zero when a float32 tolerance (1e-5 logits and losses, 1e-4
gradients) or the float64 one (1e-6: the expectations are stored in float32, so float64 can only
show their rounding, about 6e-8) is exceeded.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import Config, DeepseekV3ForCausalLM, load_safetensors  # noqa: E402

TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-6, 1e-6)}


def max_rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def norm_rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_case(path, dtype):
    cfg = Config.load(os.path.join(path, "config.json"))
    weights = load_safetensors(os.path.join(path, "model.safetensors"))
    batch = load_safetensors(os.path.join(path, "batch.safetensors"))
    exp = load_safetensors(os.path.join(path, "expected.safetensors"))

    model = DeepseekV3ForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SystemExit(f"{path}: state dict mismatch: missing {missing}, unexpected {unexpected}")
    model = model.to(dtype)
    tokens, labels = batch["tokens"].long(), batch["labels"].long()
    out = model(tokens, labels)
    out["loss.total"].backward()

    tol_fwd, tol_grad = TOL[dtype]
    rows = []  # (quantity, error, tolerance)
    for key in ["logits"] + [k for k in exp if k.startswith("mtp_logits.")]:
        rows.append((key, max_rel(out[key].detach(), exp[key]), tol_fwd))
    for key in [k for k in exp if k.startswith("loss.")]:
        rows.append((key, max_rel(out[key].detach().reshape(1), exp[key]), tol_fwd))

    # Routing: indices sorted per row, identical; loads identical.
    moe_layers = [i for i, l in enumerate(model.model.layers) if l.is_moe]
    for i in moe_layers:
        key = f"routing.{i}.indices"
        if key in exp:
            got = model.model.layers[i].mlp.last_routing.sort(dim=-1).values.int()
            rows.append((key, float((got != exp[key]).sum().item()), 0.0))
        key = f"routing.{i}.load"
        if key in exp:
            idx = model.model.layers[i].mlp.last_routing
            load = torch.bincount(idx.reshape(-1), minlength=cfg.n_routed_experts).double()
            rows.append((key, (load - exp[key].double()).abs().max().item(), 0.0))
        key = f"routing.{i}.balance"
        if key in exp:
            rows.append((key, max_rel(model.model.layers[i].mlp.last_balance.reshape(1), exp[key]),
                         tol_fwd))

    grads = {n: p.grad for n, p in model.named_parameters()}
    worst = ("", 0.0)
    for name, g in grads.items():
        key = f"grad.{name}"
        if key in exp:
            err = norm_rel(g, exp[key])
            rows.append((key, err, tol_grad))
        else:
            # Experts that received no token have no expected gradient: ours must be zero.
            err = 0.0 if g is None else g.abs().max().item()
            rows.append((key + " (none expected)", err, 0.0))
        if err > worst[1]:
            worst = (key, err)
    expected_grads = {k[5:] for k in exp if k.startswith("grad.")}
    for name in expected_grads - set(grads):
        rows.append((f"grad.{name} (no such parameter)", float("inf"), 0.0))
    return rows


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    default_root = os.path.normpath(os.path.join(here, "..", "tests", "data", "reference"))
    cases = argv or [os.path.join(default_root, c) for c in ("tiny-v3", "tiny-v2lite")]
    failed = False
    for path in cases:
        for dtype in (torch.float64, torch.float32):
            rows = run_case(path, dtype)
            bad = [r for r in rows if not r[1] <= r[2]]
            failed |= bool(bad)
            name = os.path.basename(os.path.normpath(path))
            print(f"== {name} {str(dtype).replace('torch.', '')}: {len(rows) - len(bad)}/{len(rows)} pass")
            for q, err, tol in rows:
                if not q.startswith("grad.") or not err <= tol:
                    print(f"  {q:60s} {err:10.3e}  tol {tol:.0e}  {'ok' if err <= tol else 'FAIL'}")
            g = [(q, e) for q, e, _ in rows if q.startswith("grad.")]
            q, e = max(g, key=lambda r: r[1])
            print(f"  {'worst gradient: ' + q:60s} {e:10.3e}  (of {len(g)} gradients)")
    print("PASS" if not failed else "FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
