"""AnnotationQC library: GUI-free science behind the AnnotationQC Slicer module."""
