"""Reports: figures and the study's results page."""
