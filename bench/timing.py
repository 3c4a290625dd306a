"""The worker side of the model benchmarks: what runs inside one measurement process.

Threads: the driver (:mod:`bench.driver`) sets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the
worker's environment before either framework is imported; the worker then calls
``torch.set_num_threads`` or Paddle's ``core.set_num_threads`` (:func:`set_framework_threads`)
with the same number.

Timing: ``time.perf_counter`` around each call, ``warmup`` calls discarded, the median of
``repeats`` calls reported (plus min and max). On CPU both frameworks execute eagerly and
synchronously, so no device synchronisation is needed.

Memory (Linux): ``peak_rss_mib`` is the process's peak resident set (``getrusage`` ``ru_maxrss``:
imports, model, weights and the measured calls); ``phase_peak_rss_mib`` is the peak during the
measured calls only (the kernel's ``VmHWM`` reset through ``/proc/self/clear_refs`` just before
them), and ``base_rss_mib`` the resident set just before them.

The result goes back to the driver as one JSON line (:func:`emit_result`).
"""

import json
import resource
import statistics
import sys
import time

RESULT_PREFIX = "BENCH_RESULT "
SIDES = ("torch", "paddle")


def set_framework_threads(side: str, threads: int):
    """Intra-op threads of the framework of ``side`` (after the environment set them for OpenMP)."""
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
    elif side == "paddle":
        import paddle

        paddle.base.core.set_num_threads(threads)
    else:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")


# --- timing and memory ---------------------------------------------------------------------------


def rss_mib(field: str = "VmRSS"):
    """``field`` of ``/proc/self/status`` (VmRSS, VmHWM) in MiB, or None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_peak_rss_mib():
    """Peak resident set of this process since it started, in MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds():
    """User + system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _minor_faults():
    """Minor page faults of this process (all its threads) so far: pages the kernel had to map,
    mostly fresh memory touched for the first time."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(fn, warmup: int, repeats: int, after_warmup=None):
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``after_warmup()``, when given, runs between the two (e.g. to reset a :class:`SectionTimer`).

    Returns:
        dict with ``times_s`` (each timed call, seconds), ``cpu_times_s`` (the process's CPU time
        in each, all threads), ``minor_faults`` (the process's minor page faults in each),
        ``median_s``, ``median_cpu_s``, ``median_minor_faults``, ``min_s``, ``max_s``,
        ``base_rss_mib`` (resident set after the warm-up), ``phase_peak_rss_mib`` (peak during the
        warm-up and timed calls; None where the peak cannot be reset) and ``peak_rss_mib``
        (the process's peak since start).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    can_reset = reset_peak_rss()
    for _ in range(warmup):
        fn()
    if after_warmup is not None:
        after_warmup()
    base = rss_mib()
    times, cpu_times, faults = [], [], []
    for _ in range(repeats):
        cpu_start, faults_start = _cpu_seconds(), _minor_faults()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(_cpu_seconds() - cpu_start)
        faults.append(_minor_faults() - faults_start)
    return {
        "times_s": times,
        "cpu_times_s": cpu_times,
        "minor_faults": faults,
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpu_times),
        "median_minor_faults": statistics.median(faults),
        "min_s": min(times),
        "max_s": max(times),
        "base_rss_mib": base,
        "phase_peak_rss_mib": rss_mib("VmHWM") if can_reset else None,
        "peak_rss_mib": process_peak_rss_mib(),
    }


class SectionTimer:
    """Accumulates wall time spent inside some calls (e.g. the GHM losses) during a measurement.

    ``enter()`` / ``exit()`` are installed as forward pre- and post-hooks of the loss layers (both
    frameworks have them), so the forward time of each loss call is counted without editing the
    model; ``per_call_s`` divides by the number of measured calls.
    """

    def __init__(self):
        self.total_s = 0.0
        self.calls = 0
        self._start = None

    def enter(self, *args):
        self._start = time.perf_counter()

    def exit(self, *args):
        if self._start is not None:
            self.total_s += time.perf_counter() - self._start
            self.calls += 1
            self._start = None

    def reset(self):
        self.total_s = 0.0
        self.calls = 0
        self._start = None


def emit_result(result: dict):
    """Print the worker's result as the one JSON line the driver reads."""
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
