"""Benchmark: how often the LLM judge agrees with people on HH-RLHF harmless pairs.

Runs `tether judge` (the default model unless overridden, the shipped constitution as rubric,
both orders averaged) on the first N held-out pairs of `shared:hh_rlhf_harmless/test.jsonl.gz`
and compares each verdict with the human label (the pair's "chosen"). Printed, and written to
runs/bench/judge_agreement.json: agreement with its 95% Wilson interval, the fraction of
position-consistent verdicts, the judge's raw preference for the letter A before averaging
(0.5 = none), agreement on the consistent verdicts only, mean strength, and the wall time.

People agree with each other on roughly 0.62-0.73 of HH pairs; a 135M judge is not expected
to come close, which is what this measures.

    nice -n 10 python benchmarks/judge_agreement.py [key=value ...]      (overrides go to JudgeConfig, e.g. limit=300 model=PATH)
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench"


def main(argv: list[str]) -> dict:
    from tether.config import JudgeConfig, load_config
    from tether.data.readers import read_preferences
    from tether.eval.calibration import wilson_interval
    from tether.stages.judge import run_judge

    cfg = load_config(
        JudgeConfig,
        None,
        ["data=shared:hh_rlhf_harmless/test.jsonl.gz", "limit=100", "skip_bad_rows=true", f"output_dir={OUT / 'judge_hh'}", *argv],
    )
    summary = run_judge(cfg)
    pairs = read_preferences(Path(cfg.output_dir) / "preferences.jsonl")
    agree = [p.meta["agrees_with_input"] for p in pairs]
    consistent = [p.meta["agrees_with_input"] for p in pairs if p.meta["position_consistent"]]
    low, high = wilson_interval(sum(agree), len(agree))
    result = {
        "judge": summary["annotator"],
        "pairs": len(agree),
        "agreement": sum(agree) / len(agree),
        "agreement_ci_low": low,
        "agreement_ci_high": high,
        "position_consistent_fraction": summary["position_consistent_fraction"],
        "agreement_when_consistent": sum(consistent) / len(consistent) if consistent else None,
        "n_consistent": len(consistent),
        "p_letter_a": summary["p_letter_a"],
        "mean_strength": summary["mean_strength"],
        "rows_skipped": summary["rows_skipped"],
        "seconds": summary["seconds"],
        "pairs_per_second": len(agree) / summary["seconds"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "judge_agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
