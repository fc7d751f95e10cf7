# The H200 exploration sweep behind docs/QUALITY.md (one device call, 540 s limit; 3 of the 15 arms finished).
# Run from a checkout root with .carry-quality/ holding: src/ (medembed/ and bench/bench_quality.py of this branch),
# whl/ (datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19, datasketch 2.0.0, fsspec 2026.9.0,
# sentence-transformers 6.2.0 wheels), minilm/ (all-MiniLM-L6-v2 with fp16 weights, to fit the 64 MiB carry limit;
# cast back to fp32 below), data/medquad_visible.jsonl.gz and arms.json (= bench/quality_sweep_arms.json).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry-quality/whl/*.whl || exit 1
export PYTHONPATH=$PWD/.carry-quality/src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY' || exit 1
import shutil, torch
from safetensors.torch import load_file, save_file
shutil.copytree('.carry-quality/minilm', '/tmp/minilm', dirs_exist_ok=True)
sd = load_file('/tmp/minilm/model.safetensors')
save_file({k: v.float().contiguous() for k, v in sd.items()}, '/tmp/minilm/model.safetensors', metadata={'format': 'pt'})
print(torch.__version__, torch.cuda.get_device_name(0))
PY
python3 -c "import sentence_transformers, transformers, datasets; print(sentence_transformers.__version__, transformers.__version__, datasets.__version__)"
timeout 520 python3 .carry-quality/src/bench/bench_quality.py --data .carry-quality/data/medquad_visible.jsonl.gz --base-model /tmp/minilm \
  --arms-json .carry-quality/arms.json --alpha-curve --batch-size 256 --max-probe-rows 0 --max-lso-rows 0 --max-queries 500 --max-dev-queries 200 --work /tmp/bq --out $OUT/quality-sweep-h200.json 2>&1 | grep -v -E "it/s|s/it|Loading weights|Writing model|widget" | tee $OUT/log.txt | tail -c 6000
