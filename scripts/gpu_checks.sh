#!/usr/bin/env bash
# The checks and measurements that need an NVIDIA GPU, in one go (docs/cuda.md):
#
#   scripts/gpu_checks.sh LOG_DIR [STAGE...]
#     stages: tests sanitize parity bench train ops infer profile transformers
#     (default: all but train and profile)
#
# Uses the dsv3 binaries on PATH, else build/. Every stage writes LOG_DIR/<stage>.log; the last
# lines printed are a summary. `bench` also runs the PyTorch/transformers baselines when python3
# can import torch and transformers. `train` needs prepared data: DATA_DIR (dsv3 prepare output)
# and TOKENIZER_DIR. `infer` measures decode on the GPU against its roofline (a random
# bench-1b checkpoint). `transformers` loads a checkpoint written by dsv3 (CHECKPOINT, else a
# random default-small one) with Hugging Face transformers and compares the logits. `profile`
# times every kernel of a training step and of a decode step with Nsight Compute
# (scripts/kernel_profile.py sums them per kernel).
# `sanitize` runs the GPU inference tests under compute-sanitizer's memcheck and racecheck (what
# the CPU emulation of CUDA cannot see: invalid device addresses, shared-memory races).
set -uo pipefail
log_dir=${1:?usage: scripts/gpu_checks.sh LOG_DIR [tests sanitize parity bench train ops infer profile transformers]}
shift
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(tests sanitize parity bench ops infer transformers)
mkdir -p "$log_dir"
here=$(cd "$(dirname "$0")/.." && pwd)
bin() { command -v "$1" 2>/dev/null || echo "$here/build/$1"; }
DSV3=$(bin dsv3)
summary=()
note() { summary+=("$1"); echo "== $1"; }
run_stage() {  # name, command...
  local name=$1
  shift
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$log_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  note "$name: rc=$rc in $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  | tee "$log_dir/gpu.txt"

for stage in "${stages[@]}"; do
  case $stage in
    tests)
      run_stage gpu_tests "$(bin dsv3_gpu_tests)"
      run_stage op_table_cuda "$(bin dsv3_tests)" --gtest_filter='*cuda*'
      ;;
    sanitize)
      sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
      if [[ -x $sanitizer ]]; then
        for tool in memcheck racecheck; do
          run_stage "sanitize_$tool" "$sanitizer" --tool $tool --error-exitcode 1 \
            "$(bin dsv3_gpu_tests)" --gtest_filter='CudaEngine.AgreesWithTheCpuEngine:CudaEngine.GraphReplayEqualsLaunches'
        done
      else
        note "sanitize: compute-sanitizer not found (part of the CUDA toolkit)"
      fi
      ;;
    parity)
      for f in "$here"/tests/data/reference/*/; do
        [[ -f $f/expected.safetensors ]] || continue
        run_stage "parity_$(basename "$f")" "$DSV3" parity --device cuda --optimizer "$f"
        run_stage "parity_bf16_$(basename "$f")" "$DSV3" parity --device cuda --precision bf16 \
          --optimizer "$f"
        for mode in cublas kernel padded-kernel streams; do
          run_stage "parity_bf16_grouped_${mode}_$(basename "$f")" env DSV3_GROUPED_GEMM=$mode \
            "$DSV3" parity --device cuda --precision bf16 --optimizer "$f"
        done
        # The decode checks with the steps captured without programmatic dependent launch.
        run_stage "parity_bf16_no_pdl_$(basename "$f")" env DSV3_CUDA_PDL=0 \
          "$DSV3" parity --device cuda --precision bf16 "$f"
        # The decode checks with each decode step as one launch (the decode program).
        run_stage "parity_bf16_persistent_$(basename "$f")" env DSV3_CUDA_PERSISTENT=1 \
          "$DSV3" parity --device cuda --precision bf16 "$f"
      done
      ;;
    bench)
      run_stage bench_device "$DSV3" bench device
      cfg=$here/bench/configs/bench-1b.json
      for p in bf16 f32; do
        run_stage "train_step_dsv3_$p" "$DSV3" bench train-step --device cuda --precision $p \
          --config "$cfg" --batch "${BENCH_BATCH:-4}" --seq "${BENCH_SEQ:-1024}" --steps 5 \
          --warmup 2
      done
      # The routed experts through cuBLAS's grouped call (a loop of calls where it refuses the
      # types), dsv3's grouped BF16 kernel (every product, or the weight gradients only), and
      # cuBLAS calls on side streams, instead of the default batched products over padded
      # chunks (docs/cuda.md), to choose the default.
      for mode in cublas kernel padded-kernel streams; do
        run_stage "train_step_dsv3_bf16_grouped_$mode" env DSV3_GROUPED_GEMM=$mode "$DSV3" bench \
          train-step --device cuda --precision bf16 --config "$cfg" --batch "${BENCH_BATCH:-4}" \
          --seq "${BENCH_SEQ:-1024}" --steps 5 --warmup 2
      done
      # MLA's attention through head-major copies (the path before the token-major kernels).
      run_stage train_step_dsv3_bf16_head_major env DSV3_MLA_TOKEN_MAJOR=0 "$DSV3" bench \
        train-step --device cuda --precision bf16 --config "$cfg" --batch "${BENCH_BATCH:-4}" \
        --seq "${BENCH_SEQ:-1024}" --steps 5 --warmup 2
      for mode in cublas padded-kernel ""; do
        run_stage "train_step_profile_${mode:-padded}" env DSV3_GROUPED_GEMM=$mode "$DSV3" bench \
          train-step --device cuda --precision bf16 --config "$cfg" --batch "${BENCH_BATCH:-4}" \
          --seq "${BENCH_SEQ:-1024}" --steps 3 --warmup 2 --profile
      done
      if python3 -c 'import torch, transformers' 2>/dev/null; then
        run_stage train_step_hf python3 "$here/bench/hf_train_step.py" "$cfg" \
          --batch "${BENCH_BATCH:-4}" --seq "${BENCH_SEQ:-1024}"
      fi
      ;;
    ops)
      run_stage bench_ops "$DSV3" bench ops --seconds 0.05
      ;;
    infer)
      model=$log_dir/bench-1b-model
      [[ -f $model/model.safetensors ]] ||
        run_stage init_bench_1b "$DSV3" init-model "$here/bench/configs/bench-1b.json" "$model"
      for cache in bf16 f32; do
        run_stage "decode_cuda_cache_$cache" "$DSV3" bench decode -m "$model" --device cuda \
          --cache-dtype $cache --prompt-tokens 128 --new-tokens 128 --repeat 3
      done
      # The same steps captured without programmatic dependent launch (the default has it).
      DSV3_CUDA_PDL=0 run_stage decode_cuda_no_pdl "$DSV3" bench decode -m "$model" --device cuda \
        --cache-dtype bf16 --prompt-tokens 128 --new-tokens 128 --repeat 3
      # Each step as one launch (the decode program, DSV3_CUDA_PERSISTENT=1), both caches, then
      # the separate launches again, so that a drift of the GPU's clocks shows.
      for cache in bf16 f32; do
        DSV3_CUDA_PERSISTENT=1 run_stage "decode_cuda_persistent_cache_$cache" "$DSV3" bench \
          decode -m "$model" --device cuda --cache-dtype $cache --prompt-tokens 128 \
          --new-tokens 128 --repeat 3
      done
      run_stage decode_cuda_cache_bf16_again "$DSV3" bench decode -m "$model" --device cuda \
        --cache-dtype bf16 --prompt-tokens 128 --new-tokens 128 --repeat 3
      # MTP speculation needs MTP weights: the same model with one MTP layer (random weights,
      # so this checks that it runs, not what a trained model's acceptance gives).
      mtp_model=$log_dir/bench-1b-mtp-model
      sed 's/"num_nextn_predict_layers": 0/"num_nextn_predict_layers": 1/' \
        "$here/bench/configs/bench-1b.json" > "$log_dir/bench-1b-mtp.json"
      [[ -f $mtp_model/model.safetensors ]] ||
        run_stage init_bench_1b_mtp "$DSV3" init-model "$log_dir/bench-1b-mtp.json" "$mtp_model"
      run_stage decode_cuda_mtp "$DSV3" bench decode -m "$mtp_model" --device cuda \
        --prompt-tokens 128 --new-tokens 128 --repeat 3 --speculative mtp
      ;;
    profile)
      # Per-kernel times (Nsight Compute: each kernel alone, caches flushed) of one BF16 training
      # step of bench-1b and of one decode step, summarised by scripts/kernel_profile.py.
      ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      if [[ ! -x $ncu ]]; then
        note "profile: ncu not found (Nsight Compute, part of the CUDA toolkit)"
        continue
      fi
      ncu_csv=("$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw
        --print-units base)
      for mode in "" cublas; do
        csv=$log_dir/profile_train_step_${mode:-padded}.csv
        run_stage "profile_train_step_${mode:-padded}" env DSV3_GROUPED_GEMM=$mode "${ncu_csv[@]}" \
          --log-file "$csv" "$DSV3" bench train-step --device cuda --precision bf16 \
          --config "$here/bench/configs/bench-1b.json" --batch "${BENCH_BATCH:-4}" \
          --seq "${BENCH_SEQ:-1024}" --steps 1 --warmup 1
        run_stage "profile_train_step_${mode:-padded}_summary" python3 \
          "$here/scripts/kernel_profile.py" "$csv" --start embedding_forward \
          --end embedding_backward --end-inclusive
      done
      model=$log_dir/bench-1b-model
      [[ -f $model/model.safetensors ]] ||
        run_stage init_bench_1b "$DSV3" init-model "$here/bench/configs/bench-1b.json" "$model"
      run_stage profile_decode "${ncu_csv[@]}" --log-file "$log_dir/profile_decode.csv" "$DSV3" \
        bench decode -m "$model" --device cuda --cache-dtype bf16 --prompt-tokens 128 \
        --new-tokens 4 --repeat 1
      run_stage profile_decode_summary python3 "$here/scripts/kernel_profile.py" \
        "$log_dir/profile_decode.csv" --start embed_kernel --end embed_kernel --templates
      ;;
    transformers)
      ckpt=${CHECKPOINT:-$log_dir/default-small-f32}
      [[ -n ${CHECKPOINT:-} || -f $ckpt/model.safetensors ]] ||
        run_stage init_default_small "$DSV3" init-model "$here/bench/configs/default-small.json" \
          "$ckpt" --dtype f32 --std 0.05
      run_stage transformers_load python3 "$here/scripts/check_transformers_load.py" "$ckpt" \
        --dsv3 "$DSV3"
      ;;
    train)
      : "${DATA_DIR:?train stage needs DATA_DIR}" "${TOKENIZER_DIR:?and TOKENIZER_DIR}"
      common=(--config "$here/bench/configs/default-small.json" --data "$DATA_DIR"
        --tokenizer-dir "$TOKENIZER_DIR" --steps "${TRAIN_STEPS:-200}" --eval-every 100
        --save-every 0 --log-every 20 --lr 1e-3 --warmup 30)
      rm -rf "$log_dir"/run_*
      run_stage train_cpu "$DSV3" train "${common[@]}" --out "$log_dir/run_cpu"
      for p in f32 bf16; do
        run_stage "train_cuda_$p" "$DSV3" train "${common[@]}" --out "$log_dir/run_cuda_$p" \
          --device cuda --precision $p
      done
      python3 - "$log_dir"/run_cpu/metrics.jsonl "$log_dir"/run_cuda_{f32,bf16}/metrics.jsonl \
        <<'PY' 2>&1 | tee "$log_dir/train_compare.log"
import json, sys
cpu, f32, bf16 = ([json.loads(l) for l in open(p)] for p in sys.argv[1:4])
for name, run in (("cuda f32", f32), ("cuda bf16", bf16)):
    worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(cpu, run))
    print(f"{name}: {min(len(cpu), len(run))} steps; largest relative loss difference to the "
          f"cpu run {worst:.3e}; final validation loss cpu {cpu[-1].get('val_loss')} "
          f"{name} {run[-1].get('val_loss')}")
for x, y, z in zip(cpu, f32, bf16):
    if x["step"] % 20 == 0 or x["step"] == 1:
        print(f"step {x['step']:>4}: cpu {x['loss']:.6f}  cuda f32 {y['loss']:.6f}  "
              f"cuda bf16 {z['loss']:.6f}")
PY
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo
printf '%s\n' "${summary[@]}"
