"""Active learning: ROI crops, query suggestion and the annotation (answer) store."""
