"""Data sources that produce canonical jets: the embedded Pythia 8 + FastJet generator and the real-file importers."""
