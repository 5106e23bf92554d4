"""The machinery that performs and measures the handbook's fine-tuning recipe."""
