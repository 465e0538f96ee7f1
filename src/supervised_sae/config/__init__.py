"""The study's configuration (torch-free: the Snakefile imports it)."""

from supervised_sae.config.study import *  # noqa: F403
from supervised_sae.config.study import (  # noqa: F401
    ConfigError,
    NotPassed,
    StudyConfig,
    check_config,
    load_config,
    merge,
    model_depth,
    read_config_file,
    results_notes_path,
    sections,
    selected_layers,
)
