"""Measuring: per-block profiles, the link estimate and probes, what each codec costs in accuracy.

Imports only `splitcore`; the planner (`partitioner`) reads what this package measures, and no service is imported
here.
"""
