"""Analysis tools: training curves and (later) gradient fan-in and layer scores."""
