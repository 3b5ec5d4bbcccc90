#!/usr/bin/env bash
# The instance-segmentation demo, end to end on a CPU: generate the overlapping "shapes" with exact instance masks
# (if missing), train a small Mask-RT-DETR (seeded) with --eval, draw its masks and boxes on a few validation images,
# and print segm and bbox AP / AP50, the training time and where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[cpu,demo]"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

CFG=configs/demo/mask_rtdetr_shapes.yml
DATA=dataset/shapes_instances
OUT=output/demo_mask
THRESHOLD=0.5
mkdir -p "$OUT/samples"
python tools/make_demo_dataset.py --out "$DATA" --num_train 400 --num_val 60 --instances
python tools/train.py -c "$CFG" --eval -o output_eval="$OUT" 2>&1 | tee "$OUT/train.log"
cp "$DATA"/images/val/00000[0-5].jpg "$OUT/samples/"
python tools/infer.py -c "$CFG" -o weights=output/mask_rtdetr_shapes/model_final \
    --infer_dir "$OUT/samples" --output_dir "$OUT/pictures" --draw_threshold "$THRESHOLD" --save_results
python scripts/demo_curve.py --log "$OUT/train.log" --out "$OUT/curve.json" --plot "$OUT/curve.png" \
    > "$OUT/curve.txt"
# the last evaluation's boxes (written by --eval), object by object over the val set
echo -n "whole val set: "
python scripts/demo_boxes.py --anno "$DATA/annotations/instances_val.json" --pred "$OUT/bbox.json" \
    --threshold "$THRESHOLD" --out "$OUT/boxes.json" || true
echo "pictures with masks and boxes: $OUT/pictures/   (as COCO results: $OUT/pictures/bbox.json, mask.json)"
echo "learning curve: $OUT/curve.png and $OUT/curve.json"
tail -n 1 "$OUT/curve.txt"
