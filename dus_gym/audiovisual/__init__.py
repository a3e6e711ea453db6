"""Audio-visual data sets (CREMA-D, Kinetics-Sounds): preprocessing from the raw media and features."""
