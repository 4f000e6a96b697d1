"""Speed measurements of the pipeline (issue 8): `make bench` runs `python -m benchmarks.run`.

Every figure that matters is a ratio of two arms measured side by side in one run (alternating
order, fresh processes, median of several rounds), so it holds on a shared, busy machine; absolute
wall times are reported together with the load average they were taken at. See benchmarks/README.md.
"""
