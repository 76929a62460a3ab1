#!/usr/bin/env bash
# One short prepared script for a lent GPU machine (H100/H200): installs nothing from the network.
# Usage on the device: bash benchmarks/gpu_check.sh   (writes figures under $OUT or benchmarks/results/gpu/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# 1. input pipeline: GPU-resident uint8 + keras augmentation
timeout 120 $PY benchmarks/pipeline.py --images 20000 --out "$OUT/pipeline.json" 2>&1 | tail -20 | tee "$OUT/pipeline.txt"
# 2. throughput: VGG16 + paper head at 64 px, frozen/unfrozen/inference, batch 64 and 512, eager and compiled
timeout 200 $PY benchmarks/throughput.py --models vgg16 --batch 64,512 --peers --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
timeout 200 $PY benchmarks/throughput.py --models vgg16 --batch 64,512 --compile --out "$OUT/throughput_compile.json" 2>&1 | tee "$OUT/throughput_compile.txt"
# 3. a real run: the full vgg16-paper recipe on 90k synthetic images in the Tiny ImageNet layout, time budget 240 s
timeout 330 $PY benchmarks/time_to_accuracy.py --recipe vgg16-paper --synthetic 100000 --budget 240 --set model.pretrained=false --set eval_batch_size=1024 --out "$OUT/time_to_accuracy.json" 2>&1 | tail -40 | tee "$OUT/tta.txt"
