"""Barlow Twins pre-training of BTFM models and their linear-probe evaluation."""
