#!/usr/bin/env bash
# Builds the CUDA backend's GPU check into DIR: self-contained static binaries (CGO_ENABLED=0)
# and DIR/run.sh, so that the check runs from any copy of DIR on any Linux x86-64 machine with
# an NVIDIA GPU and its driver, cuBLAS and NVRTC (libcuda.so.1, libcublas.so.13|12,
# libnvrtc.so.13|12) — no repository, no Go, no network needed there.
#
#   scripts/gpu-check.sh DIR        # here
#   DIR/run.sh [OUTDIR]             # there; writes OUTDIR/report.json (default DIR)
#   PROLONG_GPU_CHECK_STEPS=conformance,nccl DIR/run.sh OUT   # some steps only (see run.sh)
#
# run.sh runs, each under its own time limit (one GPU: 750 s in all at most, the conformance
# and bench steps first; N > 1 GPUs add 90 s for NCCL over N ranks; NCCL's parts take seconds
# when they pass):
#   1. the conformance suite (engine/enginetest) on the GPU against the CPU backend, six
#      settings (fp32; fp32 attention matmuls; bf16 weights; bf16 matmuls; bf16 matmuls with the
#      fused layer ops that are off by default; the decode_attn kernels: bf16 KV cache and
#      split-KV decode), with finite differences, then its attention cases on the tiled
#      tensor-core kernels (cuda.Options.TiledAttention, kernels/flash.cu, off by default: the
#      "tiled-attention" run, which also checks that every flash_* kernel ran), its GEMM cases
#      with the GEMMs on cuBLASLt (cuda.Options.CublasLt, off by default: the "cublaslt" run),
#      its model and training cases with the engine's uninitialised tensors filled with NaN
#      (cuda.Options.UninitAlloc + PoisonUninit: the "uninit-poison" run), its top log-probs
#      cases ranked on the device (cuda.Options.DeviceTopLogProbs: the "top-logprobs" run),
#      its sampling cases and greedy generation on the split sampler (cuda.Options.SplitSample:
#      the "split-sample" run),
#      generation with decode steps replayed as CUDA graphs against eager decoding
#      (TestGPUDecodeGraphs), and the bf16 GEMMs of the 1.5B training step (8192 tokens: q/o,
#      k/v, gate/up, down, the LM head's 1024-row chunk; forward, dX, dW) on cuBLASLt against
#      cublasGemmEx, with both rates (TestGPUCublasLtMatchesGemmEx, after the suite), and
#      top_logprobs against the host's ranking on [64, 151936] logits and in generation, with
#      both paths' times (TestGPUTopLogProbs) ->
#      conformance.json (every case: error, tolerance, first bad index, got/want) and
#      conformance.log;
#   1b. NCCL (engine/dist's nccl backend on the CUDA backend's tensors, cuda's TestGPUNCCL):
#      one rank, then, where nvidia-smi lists N > 1 GPUs, N ranks (mpirun -np N where mpirun
#      is installed, else N processes with torchrun-style variables): every collective fp32
#      and bf16 checked exactly, all-reduce bus bandwidth at 1-256 MiB -> nccl.json, nccl.log
#      (nccl-ranks.json, nccl-ranks.log for N ranks). libnccl.so.2 is found by the loader, in
#      pip's nvidia/nccl/lib, or where the machine's python3 has nvidia.nccl; PROLONG_NCCL
#      overrides;
#   2. tools/bench --device cuda on the 1.5B Qwen2 shape: copy bandwidth and bf16 GEMM rate as
#      references, batch-1 decode (also with cuda.Options.DecodeGraphs, and with the split
#      sampler, cuda.Options.SplitSample, as a ratio), rollouts of 64 and 256 samples x 1024 new tokens with their
#      fraction of the HBM roofline, batch-1 decode at 4k and 16k tokens of context with an
#      fp32 and a bf16 KV cache, split over the context or not (tok/s, attention's GPU time and
#      KV read rate), a training step of 8 x 1024 tokens (tok/s, MFU, peak memory), and the
#      same step with the tiled attention kernels switched on (its tok/s as a ratio of the
#      default step's, and its kernel profile), and the same step with the GEMMs on cuBLASLt
#      (cuda.Options.CublasLt: its tok/s as a ratio, the 8192³ GEMM rate on cuBLASLt, the GEMMs'
#      GPU time in both steps' profiles), and last a rollout of 64 x 256 tokens asking for 20
#      top log-probs a token, ranked on the host and on the device, as fractions of the plain
#      rollout's rate, and a scoring pass of 8 x 1024 tokens with the default logit budget
#      (chunks of 110 rows) and with 1 GiB (cuda.Options.LogitBudget: 1024 rows) -> bench.json,
#      bench.log;
#   3. the default GRPO job (tools/train) on the GPU: seeds 1-3 (--device cuda), seed 1 again
#      (determinism) and seed 1 with exact fp32 matmuls (--device cuda-fp32) -> train.log
#      (held-out accuracy of each), train-metrics.jsonl (seed 1);
#   4. the seed-1 run's final and best exports loaded by the machine's transformers and checked
#      against ONNX Runtime on model.onnx (scripts/check_transformers.py) -> transformers.jsonl;
# then merges them into report.json with nvidia-smi's view of the GPU, and a verdict for each path
# that is off by default (report.json's "options": not verified / passes and wins / passes, does
# not win), which says which defaults to switch.
set -euo pipefail
dir="${1:?usage: scripts/gpu-check.sh DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$dir"
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
# DIR travels to a lent GPU machine as a carried path, 64 MiB at most: the binaries are built
# without the symbol and DWARF tables (-s -w; panics still print file:line; 77 MB -> 60 MB) and
# travel gzipped (about a third of that); run.sh unpacks them outside OUTDIR.
ld=(-trimpath -ldflags='-s -w')
go test -c "${ld[@]}" -o "$dir/cuda.test" ./cuda
go build "${ld[@]}" -o "$dir/bench" ./tools/bench
go build "${ld[@]}" -o "$dir/train" ./tools/train
go build "${ld[@]}" -o "$dir/gpureport" ./scripts/gpureport
for f in cuda.test bench train gpureport; do
	gzip -9 -n -f "$dir/$f"
done
cp scripts/check_transformers.py "$dir/"
cat >"$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU check of the CUDA backend; see scripts/gpu-check.sh in the repository.
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"
# The binaries travel gzipped: unpack them into a scratch directory (not OUTDIR, which comes back).
bin="${TMPDIR:-/tmp}/prolong-gpu-check-bin"
mkdir -p "$bin"
for f in cuda.test bench train gpureport; do
	if [ ! -x "$bin/$f" ] || [ "$here/$f.gz" -nt "$bin/$f" ]; then
		gzip -dc "$here/$f.gz" >"$bin/$f" && chmod +x "$bin/$f"
	fi
done
export PROLONG_CUDA_CACHE="$out/kernel-cache"
# cuBLAS and NVRTC also live in Python's nvidia wheels; let the loader find them there too.
for d in /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib /usr/lib/python3*/site-packages/nvidia/cu13/lib \
	/usr/local/lib/python3*/dist-packages/nvidia/nccl/lib /usr/lib/python3*/site-packages/nvidia/nccl/lib; do
	[ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
# NCCL (pip's nvidia-nccl-cu12/cu13, which PyTorch installs) where python3 has it elsewhere (a venv).
if [ -z "${PROLONG_NCCL:-}" ]; then
	d=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null) &&
		[ -f "$d/libnccl.so.2" ] && export PROLONG_NCCL="$d/libnccl.so.2"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >"$out/nvidia-smi.csv" 2>&1
# PROLONG_GPU_CHECK_STEPS picks steps (comma-separated, in this order whatever the list's):
# conformance, nccl, bench, train, transformers; all by default. Where one call may run 10
# minutes and all steps' limits add up to more, split the check over two calls into the same
# OUTDIR, e.g. conformance,nccl then bench,train,transformers (the report reads what is there).
steps=",${PROLONG_GPU_CHECK_STEPS:-conformance,nccl,bench,train,transformers},"
want() { [[ "$steps" == *",$1,"* ]]; }
t0=$(date +%s)
if want conformance; then
	echo "== conformance"
	PROLONG_REQUIRE_CUDA=1 PROLONG_CONFORMANCE_JSON="$out/conformance.json" \
		timeout 240 "$bin/cuda.test" -test.run 'Conformance|Compile|Dropped|GPUBindings|GPUDecodeGraphs|GPUCublasLt|GPUFoldBF16|GPUTopLogProbs' -test.v >"$out/conformance.log" 2>&1
	echo "conformance exit $? after $(( $(date +%s) - t0 )) s"; grep -E '^(--- |ok|FAIL|PASS)' "$out/conformance.log" | tail -5
fi
if want nccl; then
	echo "== nccl, one rank"
	PROLONG_REQUIRE_CUDA=1 PROLONG_REQUIRE_NCCL=1 PROLONG_NCCL_JSON="$out/nccl.json" \
		timeout 60 "$bin/cuda.test" -test.run '^TestGPUNCCL$' -test.v >"$out/nccl.log" 2>&1
	echo "nccl exit $? after $(( $(date +%s) - t0 )) s"; grep -E 'nccl|^(--- |ok|FAIL|PASS)' "$out/nccl.log" | tail -14
	ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
	if [ "${ngpu:-0}" -gt 1 ]; then
		echo "== nccl, $ngpu ranks"
		export PROLONG_REQUIRE_CUDA=1 PROLONG_REQUIRE_NCCL=1 PROLONG_NCCL_JSON="$out/nccl-ranks.json"
		if command -v mpirun >/dev/null; then
			xs=(); for v in LD_LIBRARY_PATH PROLONG_CUDA_CACHE PROLONG_NCCL PROLONG_REQUIRE_CUDA PROLONG_REQUIRE_NCCL PROLONG_NCCL_JSON; do
				[ -n "${!v:-}" ] && xs+=(-x "$v")
			done
			echo "launcher: mpirun -np $ngpu" >"$out/nccl-ranks.log"
			timeout 90 mpirun --allow-run-as-root --oversubscribe -np "$ngpu" "${xs[@]}" \
				"$bin/cuda.test" -test.run '^TestGPUNCCL$' -test.v >>"$out/nccl-ranks.log" 2>&1
		else # no MPI here: N processes with torchrun-style variables, the unique id over TCP
			echo "launcher: $ngpu processes with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR (no mpirun)" >"$out/nccl-ranks.log"
			for r in $(seq 0 $((ngpu - 1))); do
				RANK=$r WORLD_SIZE=$ngpu LOCAL_RANK=$r LOCAL_WORLD_SIZE=$ngpu MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
					timeout 90 "$bin/cuda.test" -test.run '^TestGPUNCCL$' -test.v >"$out/nccl-rank-$r.log" 2>&1 &
			done
			wait
			cat "$out"/nccl-rank-*.log >>"$out/nccl-ranks.log"
		fi
		echo "nccl $ngpu ranks done after $(( $(date +%s) - t0 )) s"; grep -E 'nccl|^(--- |ok|FAIL|PASS)' "$out/nccl-ranks.log" | tail -14
		unset PROLONG_REQUIRE_CUDA PROLONG_REQUIRE_NCCL PROLONG_NCCL_JSON
	fi
fi
if want bench; then
	echo "== bench"
	timeout 240 "$bin/bench" --device cuda --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
	echo "bench exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
fi
if want train; then
	echo "== default job on the GPU"
	# Seeds 1, 2 and 3 with bf16 matmuls (--device cuda), seed 1 again (same seed, same GPU: the
	# same weights?), seed 1 with exact fp32 matmuls (--device cuda-fp32), and seed 1 with every
	# path that is off by default switched on (PROLONG_CUDA_OPTIONS=all: tiled attention, bf16 KV,
	# split-KV decode, the fused layer ops, multi-tensor AdamW, decode graphs, cuBLASLt, uninit-alloc, fold-bf16, device-top-logprobs, split-sample,
	# large-logit-chunks), side by side: the model is tiny,
	# the GPU has room for all six.
	(cd "$out" && for run in "cuda 1 s1" "cuda 2 s2" "cuda 3 s3" "cuda 1 s1-again" "cuda-fp32 1 s1-fp32" "cuda 1 s1-all all"; do
		set -- $run
		PROLONG_CUDA_OPTIONS="${4:-}" timeout 150 "$bin/train" --device "$1" --seed "$2" --quiet --out "$out/train-$3" >"$out/train-$3.log" 2>&1 &
	done; wait)
	echo "train runs done after $(( $(date +%s) - t0 )) s"
	for r in s1 s2 s3 s1-again s1-fp32 s1-all; do
		echo "$r: $(grep -h 'held-out accuracy:' "$out/train-$r.log" || tail -1 "$out/train-$r.log")"
	done | tee "$out/train.log"
	a="$out/train-s1/checkpoints/step-000200/model.safetensors"; b="$out/train-s1-again/checkpoints/step-000200/model.safetensors"
	if cmp -s "$a" "$b"; then echo "seed 1 twice: identical final weights"; else echo "seed 1 twice: final weights DIFFER"; fi | tee -a "$out/train.log"
	cp "$out/train-s1/metrics.jsonl" "$out/train-metrics.jsonl" 2>/dev/null
fi
if want transformers; then
	echo "== our exports in transformers and ONNX Runtime (the machine's python3)"
	cp "$here/check_transformers.py" "$out/" 2>/dev/null
	timeout 60 python3 "$here/check_transformers.py" "$out/train-s1/checkpoints/step-000200" "$out/train-s1/checkpoints/best" \
		2>"$out/transformers.err" | tee "$out/transformers.jsonl"
	echo "transformers check exit ${PIPESTATUS[0]}"
fi
"$bin/gpureport" "$out" >"$out/report.json" && echo "report: $out/report.json"
RUN
chmod +x "$dir/run.sh"
du -sh "$dir"
