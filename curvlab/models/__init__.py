"""Reference models in plain arrays with exact curvature products."""
