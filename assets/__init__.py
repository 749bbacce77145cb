"""The lineage, one module per stage: thin assets over eagrl_pipeline."""
