"""Agreement between readers: ICC (``icc``), overlap/surface metrics and lesion matching
(``segmentation_metrics``), STAPLE and majority-vote consensus (``consensus``)."""
