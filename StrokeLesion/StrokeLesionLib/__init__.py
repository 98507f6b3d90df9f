"""StrokeLesion library: GUI-free science behind the StrokeLesion Slicer module."""
