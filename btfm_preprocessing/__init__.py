"""Preprocessing: ROI conversion, scene search and reading, and tile writing for BTFM."""
