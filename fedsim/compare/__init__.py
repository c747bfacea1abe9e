"""`fedsim compare`: a grid of strategies × settings × seeds, run resumably, then one table, plots and an HTML report.

grid (expand the overrides) → sweep (run what is missing) → table (mean ± std over seeds) → plots → report.
"""
