#!/usr/bin/env bash
# The lookup-table figures of the hardware_models issue, on this host: tables for resnet56 and mobilenetv2
# (PyTorch eager) and resnet56 (ONNX Runtime), built with the defaults at 1 thread, each validated on 50 random
# variants (seed 1) in 10 passes; two more mobilenetv2 builds scored on the same measurements (--also) to show how
# much a table moves from build to build; prediction time per call; the noise of repeated measurements of one
# model; the device list. Run it with nothing else on the CPU (about 30 minutes).
# Usage: bash scripts/lut_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/lut_check}"
mkdir -p "$out"
bin=.venv/bin
build() {  # model device table
    /usr/bin/time -f "build wall %e s" "$bin/prunegym" lut build --device "$2" --model "$1" --threads 1 --out "$3" \
        > "${3%.json}.build.log" 2>&1
}
for spec in "resnet56 host-cpu" "resnet56 host-cpu-ort" "mobilenetv2 host-cpu"; do
    read -r model device <<< "$spec"
    table="$out/${model}_$device.json"
    build "$model" "$device" "$table"
    also=()
    if [ "$model" = mobilenetv2 ]; then
        for i in 2 3; do
            build "$model" "$device" "$out/${model}_${device}_build$i.json"
            also+=("$out/${model}_${device}_build$i.json")
        done
    fi
    "$bin/prunegym" lut validate --lut "$table" --model "$model" --samples 50 --seed 1 --rounds 10 --json \
        --rows "${table%.json}.rows.json" ${also[@]+--also "${also[@]}"} > "${table%.json}.validate.json"
done
for model in resnet56 mobilenetv2; do
    "$bin/python" -m scripts.lut_predict_timing --lut "$out/${model}_host-cpu.json" --model "$model" \
        > "$out/predict_timing_$model.txt"
done
"$bin/python" -m scripts.latency_noise --model resnet56 --threads 1 > "$out/noise_resnet56.txt"
"$bin/prunegym" devices > "$out/devices.txt"
"$bin/python" -m scripts.lut_summary "$out" > "$out/summary.md"
cat "$out/summary.md"
