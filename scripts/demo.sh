#!/usr/bin/env bash
# The demo, end to end on a CPU: generate the "shapes" dataset (if missing), train a small RT-DETR (seeded) with
# --eval, draw its detections on a few validation images, check that every object gets one box above the draw
# threshold, and print AP / AP50, the training time and where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[cpu,demo]"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

CFG=configs/demo/rtdetr_r18vd_shapes.yml
OUT=output/demo
THRESHOLD=0.5
mkdir -p "$OUT/samples"
python tools/make_demo_dataset.py --out dataset/shapes --num_train 400 --num_val 60
python tools/train.py -c "$CFG" --eval -o output_eval="$OUT" 2>&1 | tee "$OUT/train.log"
cp dataset/shapes/images/val/00000[0-5].jpg "$OUT/samples/"
python tools/infer.py -c "$CFG" -o weights=output/rtdetr_r18vd_shapes/model_final \
    --infer_dir "$OUT/samples" --output_dir "$OUT/pictures" --draw_threshold "$THRESHOLD" --save_results
python scripts/demo_curve.py --log "$OUT/train.log" --out "$OUT/curve.json" --plot "$OUT/curve.png" \
    > "$OUT/curve.txt"
# the last evaluation's detections (written by --eval), object by object: in the drawn pictures, then the val set
echo -n "drawn pictures: "
python scripts/demo_boxes.py --anno dataset/shapes/annotations/instances_val.json --pred "$OUT/bbox.json" \
    --threshold "$THRESHOLD" --images_in "$OUT/samples" || true
echo -n "whole val set: "
python scripts/demo_boxes.py --anno dataset/shapes/annotations/instances_val.json --pred "$OUT/bbox.json" \
    --threshold "$THRESHOLD" --out "$OUT/boxes.json" || true
echo "pictures with detections: $OUT/pictures/   (detections as JSON: $OUT/pictures/bbox.json)"
echo "learning curve: $OUT/curve.png and $OUT/curve.json"
tail -n 1 "$OUT/curve.txt"
