"""Profiling, cost model and partition search; and the accuracy figures of each codec."""
