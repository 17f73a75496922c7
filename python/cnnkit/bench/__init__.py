"""Machine limits measured by cnnkit itself, for benchmarks to print beside their figures."""
from .machine import memory_bandwidth, peak_note, machine_header

__all__ = ["memory_bandwidth", "peak_note", "machine_header"]
