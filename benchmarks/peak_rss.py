"""Run a command and print its wall time and the peak RSS of its largest process.

    python3 benchmarks/peak_rss.py degrade build --recipe maug --source demo:20000 --limit 200000 \\
        --format raw --device cpu --out /tmp/rss200k
"""

import resource
import subprocess
import sys
import time

started = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(f"exit {code}, wall {time.perf_counter() - started:.0f} s, peak RSS of the largest process "
      f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MiB")
sys.exit(code)
