"""P1-P3 of the attention core at the published sizes; writes benchmarks/results/attention.md.

python benchmarks/attention.py            # published sizes (about 5 minutes on 2 cores)
python benchmarks/attention.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.benchmarking.attention import AttentionBenchConfig, run_attention_bench

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (does not overwrite the published table)")
    args = parser.parse_args()
    config = AttentionBenchConfig.quick() if args.quick else AttentionBenchConfig()
    command = "python benchmarks/attention.py" + (" --quick" if args.quick else "")
    report = run_attention_bench(config, command)
    print(report.markdown())
    path = RESULTS / ("attention-quick.md" if args.quick else "attention.md")
    print(f"written to {report.write(path)}")


if __name__ == "__main__":
    main()
