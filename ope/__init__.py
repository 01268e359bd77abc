"""Off-policy evaluation of copy policies on DecisionLogs (estimators, intervals, the gate).

The estimators arrive with their own issue; this package is importable so the rest of copyloop
can depend on the name.
"""
