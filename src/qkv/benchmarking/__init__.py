"""Side-by-side benchmarks: our figure, the reference's figure and their ratio, measured in one run.

``benchmarks/*.py`` (not shipped) and ``qkv bench`` both call into here, so a user reproduces the published tables
on their own machine with one command.
"""
