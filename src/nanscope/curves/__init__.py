"""Training curves read from other tools' logs (``nanscope doctor``): one reader per format, one model."""
