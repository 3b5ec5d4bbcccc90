#!/usr/bin/env bash
# The demo, end to end on a CPU: generate the "shapes" dataset (if missing), train a small RT-DETR with --eval
# after every epoch, draw its detections on a few validation images, and print AP / AP50 and where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[cpu]"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

CFG=configs/demo/rtdetr_r18vd_shapes.yml
OUT=output/demo
mkdir -p "$OUT/samples"
python tools/make_demo_dataset.py --out dataset/shapes --num_train 400 --num_val 60
python tools/train.py -c "$CFG" --eval -o output_eval="$OUT" 2>&1 | tee "$OUT/train.log"
cp dataset/shapes/images/val/00000[0-5].jpg "$OUT/samples/"
python tools/infer.py -c "$CFG" -o weights=output/rtdetr_r18vd_shapes/model_final \
    --infer_dir "$OUT/samples" --output_dir "$OUT/pictures" --draw_threshold 0.5 --save_results
python benchmarks/demo_curve.py --log "$OUT/train.log" --out "$OUT/curve.json"
echo "pictures with detections: $OUT/pictures/   (detections as JSON: $OUT/pictures/bbox.json)"
