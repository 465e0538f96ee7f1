"""Which training job held which device when, read from a study's job logs.

    python bench/device_timeline.py results/logs

Prints each job's device and time span, the largest set of jobs that ran at once, and
whether any two overlapping jobs shared a device (they must not).
"""

from __future__ import annotations

import sys

from supervised_sae.train.devices import job_spans, max_concurrency


def main() -> None:
    spans = sorted(job_spans(sys.argv[1] if len(sys.argv) > 1 else "results/logs"),
                   key=lambda s: s.start)
    if not spans:
        sys.exit("no training-job logs with device and start/end lines found")
    t0 = spans[0].start
    for s in spans:
        print(f"{(s.start - t0).total_seconds():8.1f}s -> {(s.end - t0).total_seconds():8.1f}s"
              f"  {s.device:>6}  {s.log}")
    clashes = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :]
               if a.start < b.end and b.start < a.end and a.device == b.device]
    n, running = max_concurrency(spans)
    print(f"\nmost jobs at once: {n}, on devices {sorted(s.device for s in running)}")
    print(f"overlapping jobs sharing a device: {len(clashes)}")


if __name__ == "__main__":
    main()
