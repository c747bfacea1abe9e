"""`fedsim compare`: a grid of strategies × settings × seeds, run resumably, then one table, plots and an HTML report.

grid (expand the overrides) → sweep (run what is missing) → table (mean and Student-t 95% interval over seeds, paired
differences; `stats`; time to target on the simulated clock: `clock`) → plots → report (with the setup and each
strategy's hyper-parameters; `setup`).
"""
