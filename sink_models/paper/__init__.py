"""The paper's study made with the library: the synthetic-task suite (synthetic), the image-level comparison of the
zoo's variants over seeds (comparison), the intervention tables (interventions) and the paper's reference numbers
(reference). Only the main job (eval/run.py's zoo suite) uses it; nothing in the core library imports it."""
