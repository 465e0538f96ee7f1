"""Evaluation: slot metrics, LM-side interventions, the evaluation job, probes, summary."""
