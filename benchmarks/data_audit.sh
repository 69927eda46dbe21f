#!/usr/bin/env bash
# Audit and prepare timings on the real archives in ../shared/data (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/camscope
OUT=runs/bench
DATA=../shared/data
export CAMSCOPE_PROGRESS=0
RULER='(?:Head|Bust)s? of (?:Divus )?([A-Z][a-z]+)'
COINS=(--pattern 'images/heads{row:05d}.jpg' --pattern 'images/tails{row:05d}.jpg' --label-from Obverse --label-regex "$RULER")
/usr/bin/time -f "cifar audit: %e s" $C audit $DATA/cifar10-jpeg.zip --out $OUT/cifar
/usr/bin/time -f "cifar prepare: %e s" $C prepare $DATA/cifar10-jpeg.zip --size 32 --out $OUT/cifar/prepared.safetensors --audit $OUT/cifar/audit.json
/usr/bin/time -f "coins audit: %e s" $C audit "$DATA/roman-coins.zip!/roman-coins/coins.csv" "${COINS[@]}" --out $OUT/coins
/usr/bin/time -f "coins prepare: %e s" $C prepare "$DATA/roman-coins.zip!/roman-coins/coins.csv" "${COINS[@]}" --size 64 --out $OUT/coins/prepared.safetensors --audit $OUT/coins/audit.json
