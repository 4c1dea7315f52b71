"""Latency as data: measured profiles (profile.py), the predictor built from them (predictor.py) and per-operator
profiles grouped by layer (op_profile.py). It knows no device and no run: devices produce the timings, the measure
stage and `edgekit profile` record them here."""
