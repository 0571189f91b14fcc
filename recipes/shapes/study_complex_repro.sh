#!/usr/bin/env bash
# Reproducibility check of the head-to-head study: re-run its fastest arm (sft_sc, seed 0) from scratch in
# another directory and compare every per-prompt verdict and the printed success with the study's own run.
# Needs the study first (earl study recipes/shapes/study_complex.yaml). About 2 min on a 2-core CPU.
#   bash recipes/shapes/study_complex_repro.sh [STUDY_DIR] [REPRO_DIR]
set -euo pipefail
study=${1:-runs/study_complex}
repro=${2:-runs/study_complex_repro}
earl study recipes/shapes/study_complex.yaml "out_dir=$repro" "seeds=[0]" --arms sft_sc --no-progress > /dev/null
python - "$study" "$repro" <<'PY'
import json, sys
from pathlib import Path
study, repro = map(Path, sys.argv[1:])
same = True
for s in ("simple", "complex"):
    a, b = (json.loads((d / "sft_sc/seed_0" / f"eval_{s}.json").read_text())["samples"] for d in (study, repro))
    keys = ("id", "success", "sc", "pq", "overall")
    differ = sum(tuple(x[k] for k in keys) != tuple(y[k] for k in keys) for x, y in zip(a, b)) + abs(len(a) - len(b))
    sa, sb = (100 * sum(r["success"] for r in rows) / len(rows) for rows in (a, b))
    print(f"sft_sc seed 0, {s}: success {sa:.1f}% (study) vs {sb:.1f}% (re-run); prompts whose verdict differs: {differ}")
    same &= differ == 0
wa, wb = ((d / "sft_sc/seed_0/model/backbone/model.safetensors").read_bytes() for d in (study, repro))
print("weights: identical" if wa == wb else "weights: differ")
sys.exit(0 if same else 1)
PY
