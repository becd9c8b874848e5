"""Deciding: the cost model, the search over plans and the inputs it is given; imports `profiling` and `splitcore`
only, never a service."""
