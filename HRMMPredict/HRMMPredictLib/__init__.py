"""HRMMPredict library: GUI-free science behind the HRMMPredict Slicer module."""
