"""Latency measurement: device runners (local, ssh, adb, browser), profiles and latency prediction."""
