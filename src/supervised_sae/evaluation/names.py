"""Names of the intervention results that the summary and the results page read, kept
free of torch: the page's module is imported while Snakemake builds the DAG."""

from __future__ import annotations

VARIANTS = ("decoder", "latent")  # the two relation-swap edits
# where a steered answer went, in this order of precedence (a token that is both the
# person's A value and someone's B value is "no effect")
OUTCOMES = ("success", "no_effect", "other_person", "other")
# the walk from the published protocol to the strict number: the change made at each step
WALK_STEPS = ("published", "site: block output", "error term added back",
              "alpha in typical on-values", "whole answer exact", "held-out people",
              "alpha chosen on train people")


def walk_metric(i: int) -> str:
    """The summary's metric name of walk step i."""
    return f"published.walk.{i}.{WALK_STEPS[i].replace(' ', '_').replace(':', '')}"
