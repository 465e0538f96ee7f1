"""The study's configuration: the spec (every key once), loading and checking, and what
a config implies. Torch-free: the Snakefile imports it."""

from supervised_sae.config.implied import draw_sections, model_depth, sections, selected_layers
from supervised_sae.config.load import (
    ConfigError,
    NotPassed,
    check_config,
    default_dict,
    from_rule_params,
    load_config,
    merge,
    read_config_file,
)
from supervised_sae.config.spec import (
    ActivationsConfig,
    DataConfig,
    DevicesConfig,
    EvaluationConfig,
    LmConfig,
    SaeConfig,
    StudyConfig,
    results_notes_path,
)

__all__ = ["ActivationsConfig", "ConfigError", "DataConfig", "DevicesConfig",
           "EvaluationConfig", "LmConfig", "NotPassed", "SaeConfig", "StudyConfig",
           "check_config", "default_dict", "draw_sections", "from_rule_params",
           "load_config", "merge", "model_depth",
           "read_config_file", "results_notes_path", "sections", "selected_layers"]
