"""Stream processing: pure scoring, ladder and rules, and the worker that applies them."""
