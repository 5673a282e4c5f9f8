"""Scaling-law accounting, planning and fitting."""
