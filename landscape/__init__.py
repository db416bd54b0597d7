"""landscape: loss-landscape smoothness and internal covariate shift, measured while a network trains.

Reproduces Santurkar et al., *How Does Batch Normalization Help Optimization?* (NeurIPS 2018).
The probes (``landscape.probes``) work on any ``nn.Module``; ``landscape`` on the command line
runs the paper's experiments and writes the report.
"""

__version__ = "0.3.0"  # the one place the version is written (pyproject.toml reads it)
