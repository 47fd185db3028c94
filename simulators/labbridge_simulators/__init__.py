"""Simulated analyzers and LIS for labbridge's demo and tests; each runnable by hand.

``python -m labbridge_simulators.lis --port 2575`` and
``python -m labbridge_simulators.astm_analyzer --port 4001`` (or ``labbridge simulate ...``).
"""
