"""Harnesses for checking fedsim's robustness, shared by its tests and its benchmarks (`bench/reliability.py`).

- `refused_configs`: configs validation must refuse, each with the key its one-line refusal names;
- `malformed`: broken train replies the server's reply checks must reject;
- `crash`: a run killed with SIGKILL after a given round, for checking that `fedsim resume` ends where the same run
  left alone ends.
"""
