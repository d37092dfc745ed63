"""Evaluation: batched edit scoring, CounterFact/zsRE metrics, collapse, downstream tasks and model-health trackers."""
